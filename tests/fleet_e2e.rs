//! Acceptance scenario 8: a fleet. Three hosts, each a real systemd 252 booted in a container
//! with a network namespace of its own (one veth link to this machine, addresses the test
//! assigns, no route anywhere else), running baton from its own .deb; reached over SSH by
//! Ansible (the pinned ansible-core of contrib/ansible/requirements.txt, in a cached
//! virtualenv) running contrib/ansible/deploy.yml; behind Debian's HAProxy, configured from the
//! README's recipe, with a load generator through it all along:
//!
//! 0. the first deploy sets up HTTPS too (baton_https_listen, a certificate the role copies):
//!    every host serves the app by HTTP/2 with it, and the files the role wrote are checked;
//! 1. a good release (and a package upgrade) rolled by the playbook: no failed request, every
//!    host on the new release, the play succeeds; its play also renews the certificate, now as
//!    systemd credentials, which every host serves afterwards;
//! 2. a release that cannot start: the play fails on the first host with baton's reason, that
//!    host resists (its old release serves), the other two never receive it, no failed request;
//! 3. `systemctl stop` of one host's baton under load with `shutdown_delay = "3s"`: no failed
//!    request; then the same without the delay, printing what HAProxy and the clients saw.
//!
//! Needs root and systemd-nspawn (tests/e2e/container.sh installs it) and installs what else
//! it needs (HAProxy, the SSH client, Ansible into its cache). Where the machine cannot run it
//! the test says so loudly and passes; with BATON_E2E_REQUIRED=1 (set by .ci/run) it fails.
//! Its figures go to stderr and to target/tmp/fleet_e2e/figures.txt, with the plays' output.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CONTAINER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/container.sh");
const ANSIBLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/ansible.sh");
const PLAYBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/ansible/deploy.yml");
const EXAMPLE_INVENTORY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/ansible/inventory.example.yml"
);
const APP: &str = "myapp";
const HOSTS: u8 = 3;
/// The test network: a /30 per host, in the range set aside for network benchmark tests (RFC
/// 2544). It exists only on the veth links; an `unreachable` route for the whole of it keeps
/// anything meant for a host that is gone from following the default route off the machine.
const NET: &str = "198.18.0.0/24";
/// Load through HAProxy: keep-alive connections sending GET back to back, of a page that takes
/// the demo app 20 ms (at most 400 requests a second: the machine has Ansible to run too).
const CONNECTIONS: usize = 8;
const PAGE: &str = "/sleep/20";

fn can_run() -> bool {
    common::e2e::can_run("fleet")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Debian's packages for the tools the test runs on this machine, installed when missing.
fn ensure_tools() {
    let missing: Vec<&str> = [
        ("haproxy", "haproxy"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("ip", "iproute2"),
    ]
    .into_iter()
    .filter(|(tool, _)| !have(tool))
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return;
    }
    let list = missing.join(" ");
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "(apt-get install -y -q --no-install-recommends {list} || (apt-get update -q && apt-get install -y -q --no-install-recommends {list})) >&2"
            ),
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install {list} (Debian's packages)");
}

/// Build the .deb with `packaging/dist.sh` (or take BATON_E2E_DEB) at the given version, and
/// keep a copy of it apart: dist.sh rewrites target/debian/ each time it runs, whoever runs it.
fn build_deb(version: &str) -> PathBuf {
    if version == "default"
        && let Some(p) = std::env::var_os("BATON_E2E_DEB")
    {
        return PathBuf::from(p);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet_e2e-debs");
    std::fs::create_dir_all(&dir).unwrap();
    let kept = dir.join(format!("baton-{version}.deb"));
    for _ in 0..3 {
        let deb = dist_deb(version);
        std::fs::copy(Path::new(ROOT).join(&deb), &kept).unwrap();
        // A dist.sh run elsewhere in the same tree may have been rewriting it meanwhile.
        if Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&kept)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return kept;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    panic!("{} is not a whole .deb", kept.display());
}

fn dist_deb(version: &str) -> PathBuf {
    common::e2e::dist(common::e2e::Package::Deb, version)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SHA-256 fingerprint of a PEM certificate file, as `Host::served_fingerprint` prints it.
fn fingerprint(cert: &Path) -> String {
    run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert))
    .trim()
    .to_owned()
}

/// One host of the fleet: a container, its inventory name and its address.
struct Host {
    /// The inventory's name for it, and HAProxy's: web1, web2, web3.
    name: String,
    container: String,
    addr: Ipv4Addr,
}

impl Host {
    fn exec(&self, args: &[&str]) -> Output {
        Command::new(CONTAINER)
            .args(["exec", &self.container, "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Run a shell line inside; panics with its output when it fails.
    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "{}: `{script}` failed ({}):\n{}",
            self.name,
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET / on the host itself (not through HAProxy).
    fn get(&self) -> String {
        let (status, body) = get(&format!("http://{}:80/", self.addr));
        assert_eq!(status, 200, "{}: {body}", self.name);
        body
    }

    /// GET `path` on the host's HTTPS socket (port 443) with curl, HTTP/2 by ALPN, trusting
    /// the certificate `ca` only: (the body, "CODE VERSION").
    fn https(&self, ca: &Path, path: &str) -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http2", "--cacert"])
            .arg(ca)
            .args(["--resolve", &format!("localhost:443:{}", self.addr)])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://localhost{path}"))
            .output()
            .unwrap();
        let all = text(&out);
        assert!(out.status.success(), "{}: curl https: {all}", self.name);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = stdout.rsplit_once('\n').unwrap();
        (body.to_owned(), tail.to_owned())
    }

    /// The SHA-256 fingerprint of the certificate a new client of the host's port 443 gets.
    fn served_fingerprint(&self) -> String {
        run(Command::new("sh")
            .arg("-c")
            .arg(
                "openssl s_client -connect $1:443 -servername localhost </dev/null 2>/dev/null \
                 | openssl x509 -noout -fingerprint -sha256",
            )
            .arg("sh")
            .arg(self.addr.to_string()))
        .trim()
        .to_owned()
    }

    fn main_pid(&self) -> String {
        self.sh(&format!(
            "systemctl show -p MainPID --value baton@{APP}.service"
        ))
        .trim()
        .to_owned()
    }

    fn releases(&self) -> String {
        self.sh(&format!("ls /srv/{APP}/releases | tr '\\n' ' '"))
            .trim()
            .to_owned()
    }

    fn current(&self) -> String {
        self.sh(&format!("readlink /srv/{APP}/current"))
            .trim()
            .to_owned()
    }

    fn status(&self) -> baton::status::Snapshot {
        let json = self.sh(&format!(
            "baton status --json --config /etc/baton/{APP}.toml"
        ));
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    fn journal(&self) -> String {
        text(&self.exec(&[
            "journalctl",
            "--no-pager",
            "-n",
            "60",
            "-u",
            &format!("baton@{APP}.service"),
        ]))
    }
}

/// HAProxy, run in the foreground by the test, with its runtime API on a socket of its own.
struct HaProxy {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
}

impl HaProxy {
    fn start(dir: &Path, hosts: &[Host]) -> HaProxy {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let socket = dir.join("haproxy.sock");
        let log = dir.join("haproxy.log");
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(&socket, addr, hosts)).unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}\n{}",
            text(&check),
            std::fs::read_to_string(&config).unwrap()
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let h = HaProxy {
            child,
            socket,
            log,
            addr,
        };
        h.wait_all_up(hosts, Duration::from_secs(20));
        h
    }

    /// `show stat` for the app's servers, by server name, as field name -> value.
    fn stats(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        haproxy_stats(&self.socket)
    }

    fn wait_all_up(&self, hosts: &[Host], limit: Duration) {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            if hosts
                .iter()
                .all(|h| stats.get(&h.name).is_some_and(|s| s["status"] == "UP"))
            {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "HAProxy does not see every host UP after {limit:?}: {:?}\n{}",
                stats
                    .iter()
                    .map(|(k, v)| format!("{k} {} {}", v["status"], v["check_status"]))
                    .collect::<Vec<_>>(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's HAProxy recipe (its `frontend www` / `backend myapp` block) as it is, on this
/// machine's addresses: the frontend on a free loopback port, the servers on the hosts. Around
/// it what every HAProxy has: a runtime API socket, the log, Debian's default timeouts.
fn haproxy_config(socket: &Path, addr: SocketAddr, hosts: &[Host]) -> String {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let block = readme
        .split("```haproxy\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README.md has a ```haproxy block");
    let mut recipe = String::new();
    for line in block.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["bind", _] => recipe.push_str(&format!("    bind {addr}\n")),
            ["server", name, _] => {
                let host = hosts
                    .iter()
                    .find(|h| h.name == *name)
                    .unwrap_or_else(|| panic!("README's server {name} is not a test host"));
                recipe.push_str(&format!("    server {name} {}:80\n", host.addr));
            }
            _ => {
                recipe.push_str(line);
                recipe.push('\n');
            }
        }
    }
    assert!(
        recipe.contains("option httpchk GET /health")
            && recipe.contains("backend myapp")
            && recipe.matches("\n    server ").count() == hosts.len(),
        "README's HAProxy recipe:\n{recipe}"
    );
    format!(
        "global
    stats socket {socket} mode 600 level admin
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 5s
    timeout client 50s
    timeout server 50s

{recipe}",
        socket = socket.display()
    )
}

/// Samples HAProxy's view of the servers every 50 ms while something happens.
struct LbWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(Duration, String, String)>>,
    before: BTreeMap<String, BTreeMap<String, String>>,
    log_from: usize,
}

/// What HAProxy saw during a window.
struct LbSeen {
    /// (time since the window started, server, "STATUS check_status check_code"), at each change.
    changes: Vec<(Duration, String, String)>,
    before: BTreeMap<String, BTreeMap<String, String>>,
    after: BTreeMap<String, BTreeMap<String, String>>,
    /// HAProxy's log lines of the window (with `option dontlog-normal`: errors and server state).
    log: Vec<String>,
}

impl LbWatch {
    fn start(lb: &HaProxy) -> LbWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let socket = lb.socket.clone();
        let before = lb.stats();
        let log_from = lb.log_text().len();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            let mut checks: BTreeMap<String, String> = BTreeMap::new();
            let mut changes = Vec::new();
            while !s.load(Ordering::SeqCst) {
                for (server, row) in haproxy_stats(&socket) {
                    // The last finished check ("* L7OK" is one under way).
                    if !row["check_status"].starts_with('*') {
                        checks.insert(
                            server.clone(),
                            format!("{} {}", row["check_status"], row["check_code"])
                                .trim()
                                .to_owned(),
                        );
                    }
                    let status = row["status"].clone();
                    if last.get(&server) != Some(&status) {
                        let check = checks.get(&server).cloned().unwrap_or_default();
                        let state = if check.is_empty() {
                            status.clone()
                        } else {
                            format!("{status} ({check})")
                        };
                        changes.push((start.elapsed(), server.clone(), state));
                        last.insert(server, status);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            changes
        });
        LbWatch {
            stop,
            handle,
            before,
            log_from,
        }
    }

    fn stop(self, lb: &HaProxy) -> LbSeen {
        self.stop.store(true, Ordering::SeqCst);
        let changes = self.handle.join().unwrap();
        let log = lb.log_text();
        LbSeen {
            changes,
            before: self.before,
            after: lb.stats(),
            log: log
                .get(self.log_from..)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// HAProxy's `show stat` (runtime API) for the app's servers; empty when it does not answer.
fn haproxy_stats(socket: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return BTreeMap::new();
    };
    let _ = s.write_all(b"show stat\n");
    let mut csv = String::new();
    let _ = s.read_to_string(&mut csv);
    parse_stats(&csv)
}

fn parse_stats(csv: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let mut servers = BTreeMap::new();
    for line in lines {
        let row: BTreeMap<String, String> = header
            .iter()
            .zip(line.split(','))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if row.get("pxname").map(String::as_str) == Some(APP)
            && row.get("svname").is_some_and(|s| s != "BACKEND")
        {
            servers.insert(row["svname"].clone(), row);
        }
    }
    servers
}

impl LbSeen {
    /// How much a counter of a server grew during the window.
    fn delta(&self, server: &str, field: &str) -> i64 {
        let n = |m: &BTreeMap<String, BTreeMap<String, String>>| {
            m.get(server)
                .and_then(|r| r.get(field))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        n(&self.after) - n(&self.before)
    }

    /// When a server was first seen in a state whose text starts with `prefix`.
    fn first(&self, server: &str, prefix: &str) -> Option<(Duration, String)> {
        self.changes
            .iter()
            .find(|(_, s, state)| s == server && state.starts_with(prefix))
            .map(|(t, _, state)| (*t, state.clone()))
    }

    fn transitions(&self) -> String {
        // Each server's first sample is where it was when the window started.
        let mut seen = std::collections::BTreeSet::new();
        let list: Vec<String> = self
            .changes
            .iter()
            .filter(|(_, server, _)| !seen.insert(server.clone()))
            .map(|(t, server, state)| format!("{server} {state} at {:.2}s", t.as_secs_f64()))
            .collect();
        if list.is_empty() {
            "no server changed state".into()
        } else {
            list.join(", ")
        }
    }

    /// Errors of one server: connection errors, response errors, retries, redispatches, 5xx.
    fn errors(&self, server: &str) -> String {
        format!(
            "connection errors {}, response errors {}, retries {}, redispatches {}, 5xx from it {}",
            self.delta(server, "econ"),
            self.delta(server, "eresp"),
            self.delta(server, "wretr"),
            self.delta(server, "wredis"),
            self.delta(server, "hrsp_5xx")
        )
    }

    fn served(&self, hosts: &[Host]) -> String {
        hosts
            .iter()
            .map(|h| format!("{} {}", h.name, self.delta(&h.name, "lbtot")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The fleet: hosts, their network, the SSH key and Ansible's files; torn down on drop.
struct Fleet {
    dir: tempfile::TempDir,
    hosts: Vec<Host>,
    ansible_bin: PathBuf,
    logs: PathBuf,
    figures: Vec<String>,
}

impl Fleet {
    fn up(ansible_bin: PathBuf) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("fleet-")
            .tempdir_in("/tmp")
            .unwrap();
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet_e2e");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();
        // The guard route first: from now on nothing for the test network leaves the machine.
        // (Unless this machine routes that range somewhere already: then it is not ours.)
        let routes = run(Command::new("ip").args(["route", "show", "root", NET]));
        assert!(
            routes
                .lines()
                .all(|l| l.starts_with("unreachable ") || l.contains(" dev ve-")),
            "this machine already routes {NET}: {routes}"
        );
        run(Command::new("ip").args(["route", "replace", "unreachable", NET]));
        let mut fleet = Fleet {
            dir,
            hosts: Vec::new(),
            ansible_bin,
            logs,
            figures: Vec::new(),
        };
        let key = fleet.dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "baton-fleet-e2e",
                "-f",
            ])
            .arg(&key));
        let mut known_hosts = String::new();
        for i in 1..=HOSTS {
            let container = format!("baton-fleet-{i}");
            let _ = Command::new(CONTAINER).args(["stop", &container]).output();
            let out = Command::new(CONTAINER)
                .args(["boot", &container])
                .env("BATON_E2E_NETWORK", "veth")
                .output()
                .unwrap();
            // Registered before anything can fail, so that drop stops it.
            let host = Host {
                name: format!("web{i}"),
                container: container.clone(),
                addr: Ipv4Addr::new(198, 18, 0, 4 * i - 2),
            };
            fleet.hosts.push(host);
            assert!(out.status.success(), "boot {container}: {}", text(&out));
            let lb_side = Ipv4Addr::new(198, 18, 0, 4 * i - 3);
            run(Command::new(CONTAINER).args([
                "net",
                &container,
                &format!("{lb_side}/30"),
                &format!("{}/30", fleet.hosts.last().unwrap().addr),
            ]));
            let host_key = run(Command::new(CONTAINER)
                .args(["ssh-enable", &container])
                .arg(key.with_extension("pub")));
            let mut fields = host_key.split_whitespace();
            let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
            known_hosts.push_str(&format!(
                "{} {kind} {blob}\n",
                fleet.hosts.last().unwrap().addr
            ));
        }
        let d = fleet.dir.path();
        std::fs::write(d.join("known_hosts"), known_hosts).unwrap();
        std::fs::create_dir_all(d.join("cp")).unwrap();
        std::fs::write(
            d.join("ansible.cfg"),
            format!(
                "[defaults]
host_key_checking = True
retry_files_enabled = False
forks = 5
[ssh_connection]
pipelining = True
ssh_args = -F /dev/null -o ControlMaster=auto -o ControlPersist=300s -o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=10
control_path_dir = {d}/cp
",
                d = d.display()
            ),
        )
        .unwrap();
        fleet
    }

    /// contrib/ansible/inventory.example.yml, as it is but for what differs here: the hosts'
    /// addresses, root over SSH with the test's key, the test's package, the demo app as the
    /// app, the test network as the trusted proxy, and this machine as the load balancer.
    /// (Written as JSON, which is YAML too.)
    /// `https`: the role's HTTPS variables, added to the app's.
    fn write_inventory(&self, deb: &Path, https: &serde_json::Value) {
        let example = run(Command::new(self.ansible_bin.join("python"))
            .args([
                "-c",
                "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            ])
            .arg(EXAMPLE_INVENTORY));
        let mut inventory: serde_json::Value = serde_json::from_str(&example).unwrap();
        let groups = &mut inventory["all"]["children"];
        let app = &mut groups["app"];
        let hosts = app["hosts"].as_object_mut().expect("app hosts");
        assert_eq!(
            hosts.keys().collect::<Vec<_>>(),
            self.hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
            "the example's hosts are the test's"
        );
        for h in &self.hosts {
            hosts[&h.name]["ansible_host"] = h.addr.to_string().into();
        }
        let vars = app["vars"].as_object_mut().expect("app vars");
        vars.remove("ansible_become");
        vars.insert("ansible_user".into(), "root".into());
        vars.insert(
            "ansible_ssh_private_key_file".into(),
            self.dir
                .path()
                .join("id_ed25519")
                .display()
                .to_string()
                .into(),
        );
        vars.insert(
            "ansible_python_interpreter".into(),
            "/usr/bin/python3".into(),
        );
        vars.insert("baton_package".into(), deb.display().to_string().into());
        for (k, v) in https.as_object().expect("HTTPS variables") {
            vars.insert(k.clone(), v.clone());
        }
        vars.insert(
            "baton_haproxy_socket".into(),
            self.dir
                .path()
                .join("haproxy.sock")
                .display()
                .to_string()
                .into(),
        );
        assert_eq!(vars["baton_app"], APP);
        assert_eq!(vars["baton_haproxy_hosts"], serde_json::json!(["lb1"]));
        let config = &mut vars["baton_config"];
        assert_eq!(config["listen"]["shutdown_delay"], "3s");
        assert_eq!(config["metrics"]["address"], "0.0.0.0:9101");
        config["listen"]["trusted_proxies"] = serde_json::json!([NET]);
        config["app"] = serde_json::json!({
            "command": ["/usr/bin/baton", "demo-app", "--port", "{port}", "--boot-time", "1s"],
        });
        config["workers"] = serde_json::json!({"count": 2, "concurrency": 0});
        // A short canary keeps the six rolls quick; the judge is the same.
        config["canary"] = serde_json::json!({"duration": "2s"});
        groups["loadbalancers"]["hosts"]["lb1"] = serde_json::json!({
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        });
        std::fs::write(
            self.dir.path().join("inventory.yml"),
            serde_json::to_string_pretty(&inventory).unwrap(),
        )
        .unwrap();
    }

    /// A release directory on the controller: REVISION, and the demo app's mode if given.
    fn release(&self, name: &str, mode: Option<&str>) -> PathBuf {
        let dir = self.dir.path().join("releases").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("REVISION"), format!("{name}\n")).unwrap();
        if let Some(mode) = mode {
            std::fs::write(dir.join("demo-mode"), mode).unwrap();
        }
        dir
    }

    /// `ansible-playbook -i inventory.yml contrib/ansible/deploy.yml -e ...`, as the README says.
    fn play(&self, label: &str, release: &str, src: &Path, extra: serde_json::Value) -> Played {
        let extra_file = self.dir.path().join(format!("extra-{label}.json"));
        std::fs::write(&extra_file, extra.to_string()).unwrap();
        let start = Instant::now();
        let out = Command::new(self.ansible_bin.join("ansible-playbook"))
            .arg("-i")
            .arg(self.dir.path().join("inventory.yml"))
            .arg(PLAYBOOK)
            .args(["-e", &format!("baton_release={release}")])
            .arg("-e")
            .arg(format!("baton_release_src={}", src.display()))
            .arg("-e")
            .arg(format!("@{}", extra_file.display()))
            .env("ANSIBLE_CONFIG", self.dir.path().join("ansible.cfg"))
            .env("ANSIBLE_HOME", self.dir.path().join("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("LC_ALL", "C.UTF-8")
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let output = text(&out);
        std::fs::write(self.logs.join(format!("play-{label}.log")), &output).unwrap();
        Played {
            ok: out.status.success(),
            output,
            took: start.elapsed(),
        }
    }

    fn figure(&mut self, line: String) {
        // Straight to stderr, past the test harness's capture: the figures are the point.
        let _ = writeln!(std::io::stderr(), "fleet_e2e: {line}");
        self.figures.push(line);
        let _ = std::fs::write(
            self.logs.join("figures.txt"),
            self.figures.join("\n") + "\n",
        );
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Ansible's SSH masters (ControlPersist), then the containers, then the guard route.
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("cp")) {
            for e in entries.flatten() {
                let _ = Command::new("ssh")
                    .args(["-F", "/dev/null", "-o"])
                    .arg(format!("ControlPath={}", e.path().display()))
                    .args(["-O", "exit", "fleet-host"])
                    .output();
            }
        }
        for h in &self.hosts {
            let _ = Command::new(CONTAINER)
                .args(["stop", &h.container])
                .output();
        }
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", NET])
            .output();
    }
}

/// A stop of web3's baton under load, and what the clients and HAProxy saw of it.
struct Stopped {
    report: LoadReport,
    seen: LbSeen,
    /// How long `systemctl stop` took.
    took: Duration,
    /// When it started, from the start of the watch.
    at: Duration,
}

/// `stop` on web3 under load through HAProxy, watching HAProxy.
fn stop_under_load(fleet: &Fleet, lb: &HaProxy, stop: &str, label: &str) -> Stopped {
    let web3 = fleet.host("web3");
    let load = Load::start(lb.addr, CONNECTIONS, PAGE, Duration::from_secs(10));
    let watch = LbWatch::start(lb);
    let watch_start = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let start = Instant::now();
    web3.sh(stop);
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let seen = watch.stop(lb);
    let report = load.stop();
    std::fs::write(
        fleet.logs.join(format!("haproxy-{label}.log")),
        seen.log.join("\n"),
    )
    .unwrap();
    Stopped {
        report,
        seen,
        took,
        at: start - watch_start,
    }
}

impl Stopped {
    /// web3's first state starting with `prefix`, and how long after the stop it came.
    fn web3_became(&self, prefix: &str) -> Option<(Duration, String)> {
        self.seen
            .first("web3", prefix)
            .map(|(t, state)| (t.saturating_sub(self.at), state))
    }

    fn figure(&self) -> String {
        let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &self.report.errors {
            *errors
                .entry(e.lines().next().unwrap_or_default())
                .or_default() += 1;
        }
        let down = match self.web3_became("DOWN") {
            Some((t, state)) => format!("web3 {state} {:.2}s after the stop", t.as_secs_f64()),
            None => "web3 never DOWN".into(),
        };
        let reason = self
            .seen
            .log
            .iter()
            .find_map(|l| l.split_once("is DOWN, reason: "))
            .map(|(_, r)| r.split(", check duration").next().unwrap_or(r))
            .unwrap_or("-");
        // Request lines (option httplog, dontlog-normal: only those that were not plain):
        // "client [date] frontend backend/server timers status bytes - - flags conns queues request".
        let requests: Vec<Vec<&str>> = self
            .seen
            .log
            .iter()
            .filter(|l| l.contains("] www "))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let redispatched = requests
            .iter()
            // actconn/feconn/beconn/srv_conn/retries, retries with a '+' when redispatched
            .filter(|w| {
                w.get(10)
                    .is_some_and(|c| c.rsplit('/').next().is_some_and(|r| r.starts_with('+')))
            })
            .count();
        let bad: Vec<String> = requests
            .iter()
            .filter(|w| w.get(5) != Some(&"200"))
            .map(|w| w.join(" "))
            .collect();
        format!(
            "stop took {:.1}s; clients: {} requests, {} failed{}; HAProxy: {down} ({reason}); web3: {}; HAProxy's log: {redispatched} requests redispatched to another host, {} answers other than 200{}",
            self.took.as_secs_f64(),
            self.report.ok + self.report.failed,
            self.report.failed,
            if errors.is_empty() {
                String::new()
            } else {
                format!(" {errors:?}")
            },
            self.seen.errors("web3"),
            bad.len(),
            bad.first()
                .map(|l| format!(", e.g. `{l}`"))
                .unwrap_or_default()
        )
    }
}

struct Played {
    ok: bool,
    output: String,
    took: Duration,
}

fn assert_no_failure(report: &LoadReport, what: &str, lb: &HaProxy, fleet: &Fleet) {
    assert_eq!(
        report.failed,
        0,
        "{what}: {} of {} requests failed: {:?}\nHAProxy log:\n{}\njournal of web1:\n{}",
        report.failed,
        report.ok + report.failed,
        report.errors,
        lb.log_text(),
        fleet.hosts[0].journal()
    );
    assert!(report.ok > 100, "{what}: too little load: {report:?}");
}

#[test]
fn a_release_rolled_across_a_fleet_by_ansible() {
    if !can_run() {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let playbook = std::fs::read_to_string(PLAYBOOK).unwrap();
    assert!(
        playbook.contains("\n  serial: 1\n") && playbook.contains("\n  max_fail_percentage: 0\n"),
        "deploy.yml rolls one host at a time and stops at the first failure"
    );
    ensure_tools();
    let deb = build_deb("default");
    let newer = build_deb("99.0.0");
    let venv = run(Command::new(ANSIBLE).arg("venv"));
    let mut fleet = Fleet::up(PathBuf::from(venv.trim()));
    // HTTPS on every host: the role copies a certificate and its key (made here) to each host
    // and serves them on baton-https@myapp.socket, read from their paths at first; the good
    // release's play below renews the certificate as systemd credentials.
    let (cert_a, key_a) = certificate(fleet.dir.path(), "a", &["localhost"], false);
    let (cert_b, key_b) = certificate(fleet.dir.path(), "b", &["localhost"], false);
    let https_a = serde_json::json!({
        "baton_https_listen": "0.0.0.0:443",
        "baton_https_certificates": [{"name": "site", "cert_src": cert_a, "key_src": key_a}],
    });
    let https_b = serde_json::json!({
        "baton_https_listen": "0.0.0.0:443",
        "baton_https_credentials": true,
        "baton_https_certificates": [{"name": "site", "cert_src": cert_b, "key_src": key_b}],
    });
    fleet.write_inventory(&deb, &https_a);
    let setup_took = t0.elapsed();

    // 0. The first deploy installs the package, the config and release r1 everywhere.
    let r1 = fleet.release("r1", None);
    // The example inventory drains each host in HAProxy for its deploy; the first two plays
    // go without, to show that baton's reload alone fails no request.
    let no_drain = serde_json::json!({"baton_haproxy_hosts": []});
    let played = fleet.play("install", "r1", &r1, no_drain);
    assert!(played.ok, "the first deploy failed:\n{}", played.output);
    for h in &fleet.hosts {
        let body = h.get();
        assert!(body.contains("hello from release r1"), "{}: {body}", h.name);
    }
    // Each host serves the app over HTTPS, by HTTP/2, with certificate a.
    for h in &fleet.hosts {
        let (body, tail) = h.https(&cert_a, "/headers");
        assert_eq!(tail, "200 2", "{}: {body}", h.name);
        assert!(
            body.contains("x-forwarded-proto: https\n"),
            "{}: {body}",
            h.name
        );
        assert_eq!(h.served_fingerprint(), fingerprint(&cert_a), "{}", h.name);
    }
    // What the role wrote: [tls] naming the copied files, root-only files, the drop-ins.
    let web1 = fleet.host("web1");
    let config = web1.sh(&format!("cat /etc/baton/{APP}.toml"));
    assert!(
        config.contains(&format!(
            "\n[tls]\ncertificates = [{{ \"cert\" = \"/etc/baton/tls/{APP}/site.crt\", \"key\" = \"/etc/baton/tls/{APP}/site.key\" }}]\n"
        )),
        "{config}"
    );
    assert_eq!(
        web1.sh(&format!(
            "stat -c '%a %U' /etc/baton/tls/{APP} /etc/baton/tls/{APP}/site.crt /etc/baton/tls/{APP}/site.key"
        )),
        "700 root\n600 root\n600 root\n"
    );
    let dropin = web1.sh(&format!(
        "cat /etc/systemd/system/baton@{APP}.service.d/https.conf"
    ));
    assert!(
        dropin.contains(&format!(
            "\nRequires=baton-https@{APP}.socket\nAfter=baton-https@{APP}.socket\n[Service]\nSockets=baton@{APP}.socket baton-https@{APP}.socket\n"
        )) && !dropin.contains("LoadCredential"),
        "{dropin}"
    );
    assert_eq!(
        web1.sh(&format!(
            "systemctl show -p Listen --value baton-https@{APP}.socket; systemctl is-enabled baton-https@{APP}.socket"
        )),
        "0.0.0.0:443 (Stream)\nenabled\n"
    );
    let lb = HaProxy::start(fleet.dir.path(), &fleet.hosts);
    let (_, body) = get(&format!("http://{}/", lb.addr));
    assert!(
        body.contains("(x-forwarded-for 127.0.0.1, 198.18.0."),
        "HAProxy is a trusted proxy: the app sees the client's address first: {body}"
    );
    fleet.figure(format!(
        "setup {:.0}s (.debs, Ansible, 3 hosts booted); first deploy of r1 to 3 hosts {:.1}s",
        setup_took.as_secs_f64(),
        played.took.as_secs_f64()
    ));

    // 1. A good release, with a package upgrade, rolled host by host under load.
    let r2 = fleet.dir.path().join("r2.tar.gz");
    let r2_dir = fleet.release("r2", None);
    run(Command::new("tar")
        .arg("-C")
        .arg(&r2_dir)
        .arg("-czf")
        .arg(&r2)
        .arg("."));
    let load = Load::start(lb.addr, CONNECTIONS, PAGE, Duration::from_secs(10));
    let watch = LbWatch::start(&lb);
    std::thread::sleep(Duration::from_millis(500));
    let played = fleet.play(
        "good",
        "r2",
        &r2,
        serde_json::json!({
            "baton_package": newer,
            "baton_keep_releases": 1,
            "baton_haproxy_hosts": [],
            "baton_https_listen": https_b["baton_https_listen"],
            "baton_https_credentials": https_b["baton_https_credentials"],
            "baton_https_certificates": https_b["baton_https_certificates"],
        }),
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = watch.stop(&lb);
    let report = load.stop();
    assert!(played.ok, "the deploy of r2 failed:\n{}", played.output);
    assert_no_failure(&report, "rolling r2 across the fleet", &lb, &fleet);
    for h in &fleet.hosts {
        let body = h.get();
        assert!(body.contains("hello from release r2"), "{}: {body}", h.name);
        assert!(
            h.sh("dpkg-query -W -f '${Version}' baton")
                .starts_with("99.0.0"),
            "{}: the package was upgraded",
            h.name
        );
        assert_eq!(h.releases(), "r2", "{}: r1 removed (keep 1)", h.name);
        assert!(
            seen.delta(&h.name, "lbtot") > 0,
            "{} served during the roll",
            h.name
        );
    }
    // The renewed certificate b, now systemd credentials: the role checked it and restarted
    // baton onto it (within the load above, which saw no failure); new clients get it.
    for h in &fleet.hosts {
        assert_eq!(h.served_fingerprint(), fingerprint(&cert_b), "{}", h.name);
        let (body, tail) = h.https(&cert_b, "/");
        assert_eq!(tail, "200 2", "{}: {body}", h.name);
        assert!(body.contains("hello from release r2"), "{}: {body}", h.name);
    }
    let web1 = fleet.host("web1");
    let config = web1.sh(&format!("cat /etc/baton/{APP}.toml"));
    assert!(
        config.contains(
            "\n[tls]\ncertificates = [{ \"cert\" = \"%d/site.crt\", \"key\" = \"%d/site.key\" }]\n"
        ),
        "{config}"
    );
    let dropin = web1.sh(&format!(
        "cat /etc/systemd/system/baton@{APP}.service.d/https.conf"
    ));
    assert!(
        dropin.contains(&format!(
            "\nLoadCredential=site.crt:/etc/baton/tls/{APP}/site.crt\nLoadCredential=site.key:/etc/baton/tls/{APP}/site.key\n"
        )),
        "{dropin}"
    );
    // The inventory names the package and the certificate the fleet runs now.
    fleet.write_inventory(&newer, &https_b);
    fleet.figure(format!(
        "1. good release r2 + package 99.0.0, rolled by ansible-playbook (serial 1): play ok in {:.1}s; {} requests through HAProxy, {} failed; served by {}; HAProxy saw: {}",
        played.took.as_secs_f64(),
        report.ok + report.failed,
        report.failed,
        seen.served(&fleet.hosts),
        seen.transitions()
    ));

    // 1b. The same play again: nothing changed on any host, so no worker is restarted.
    let generations = |fleet: &Fleet| -> Vec<(u64, Vec<u64>)> {
        fleet
            .hosts
            .iter()
            .map(|h| {
                let s = h.status();
                (s.generation, s.workers.iter().map(|w| w.id).collect())
            })
            .collect()
    };
    let before = generations(&fleet);
    let pids: Vec<String> = fleet.hosts.iter().map(Host::main_pid).collect();
    let played = fleet.play(
        "again",
        "r2",
        &r2,
        serde_json::json!({"baton_keep_releases": 1, "baton_haproxy_hosts": []}),
    );
    assert!(played.ok, "the same play again failed:\n{}", played.output);
    assert_eq!(
        generations(&fleet),
        before,
        "a play run again with the same release restarted workers:\n{}",
        played.output
    );
    assert_eq!(
        fleet.hosts.iter().map(Host::main_pid).collect::<Vec<_>>(),
        pids,
        "a play run again with the same certificates restarted baton:\n{}",
        played.output
    );
    fleet.figure(format!(
        "1b. the same play again: ok in {:.1}s, no reload, the same workers on every host",
        played.took.as_secs_f64()
    ));

    // 2. A release that cannot start: the play stops at web1, which resists; nobody notices.
    let bad = fleet.release("bad", Some("exit"));
    let load = Load::start(lb.addr, CONNECTIONS, PAGE, Duration::from_secs(10));
    let watch = LbWatch::start(&lb);
    std::thread::sleep(Duration::from_millis(500));
    // With the example's drain in HAProxy (lb1 is this machine).
    let played = fleet.play("bad", "bad", &bad, serde_json::json!({}));
    std::thread::sleep(Duration::from_millis(500));
    let seen = watch.stop(&lb);
    let report = load.stop();
    assert!(!played.ok, "a release that cannot start fails the play");
    assert_no_failure(&report, "rolling a broken release", &lb, &fleet);
    let reason = played
        .output
        .lines()
        .find(|l| l.starts_with("fatal: [web1]") && l.contains("baton resists the release"))
        .unwrap_or_else(|| panic!("no failure of web1 with baton's reason:\n{}", played.output));
    assert!(
        reason.contains("did not take release bad")
            && reason.contains("exited with status 1 before it was ready")
            && reason.contains("The release before it (r2) keeps serving here"),
        "{reason}"
    );
    assert!(
        !played.output.contains("[web2]") && !played.output.contains("[web3]"),
        "the play stopped at web1:\n{}",
        played.output
    );
    let web1 = fleet.host("web1");
    assert!(web1.get().contains("hello from release r2"));
    let status = web1.status();
    assert!(
        status
            .resisting_deployment_error
            .as_ref()
            .is_some_and(|r| r.reason.contains("exited with status 1")),
        "{status:#?}"
    );
    for h in &fleet.hosts[1..] {
        assert_eq!(h.releases(), "r2", "{} never received the release", h.name);
        assert_eq!(h.current(), format!("/srv/{APP}/releases/r2"));
        assert!(h.get().contains("hello from release r2"));
    }
    assert_eq!(
        lb.stats()["web1"]["status"],
        "UP",
        "web1 is back in HAProxy, serving r2"
    );
    assert!(
        seen.first("web1", "MAINT").is_some(),
        "the play took web1 out of HAProxy: {}",
        seen.transitions()
    );
    fleet.figure(format!(
        "2. release \"bad\" (exits at boot): play failed on web1 in {:.1}s with \"{}\"; web1 resists on r2, web2 and web3 never received it; {} requests, {} failed; HAProxy saw: {}",
        played.took.as_secs_f64(),
        status.resisting_deployment_error.unwrap().reason,
        report.ok + report.failed,
        report.failed,
        seen.transitions()
    ));

    // 3. `systemctl stop` of one host's baton under load: with the lame duck, then without.
    let stop = format!("systemctl stop baton@{APP}.service baton@{APP}.socket");
    let stopped = stop_under_load(&fleet, &lb, &stop, "stop-with-delay");
    assert_no_failure(
        &stopped.report,
        "systemctl stop with shutdown_delay",
        &lb,
        &fleet,
    );
    assert!(
        stopped.took >= Duration::from_secs(3),
        "systemctl stop took {:?}: baton served 3 s as a lame duck",
        stopped.took
    );
    assert!(
        stopped
            .web3_became("DOWN")
            .is_some_and(|(t, state)| t < Duration::from_secs(3) && state.contains("L7STS 503")),
        "HAProxy took web3 out on its 503 before baton stopped accepting: {}",
        stopped.seen.transitions()
    );
    assert_eq!(
        stopped.seen.delta("web3", "econ"),
        0,
        "no connection refused"
    );
    fleet.figure(format!(
        "3a. `{stop}` on web3 under load, shutdown_delay = \"3s\": {}",
        stopped.figure()
    ));

    // Without the lame duck: the same stop, and what the balancer and the clients see.
    let web3 = fleet.host("web3");
    web3.sh(&format!(
        "sed -i 's/^shutdown_delay = .*/shutdown_delay = \"0s\"/' /etc/baton/{APP}.toml && grep -q '^shutdown_delay = \"0s\"' /etc/baton/{APP}.toml"
    ));
    web3.sh(&format!(
        "systemctl start baton@{APP}.socket baton@{APP}.service"
    ));
    lb.wait_all_up(&fleet.hosts, Duration::from_secs(20));
    let stopped = stop_under_load(&fleet, &lb, &stop, "stop-without-delay");
    fleet.figure(format!(
        "3b. the same without shutdown_delay: {}",
        stopped.figure()
    ));
    assert!(
        stopped.web3_became("DOWN").is_some(),
        "HAProxy took web3 out: {}",
        stopped.seen.transitions()
    );
    fleet.figure(format!("wall time {:.0}s", t0.elapsed().as_secs_f64()));
    drop(lb);
    drop(fleet);
}
