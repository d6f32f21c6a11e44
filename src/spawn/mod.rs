//! Spawn backends: how a worker process is started, watched and stopped.
//!
//! The pool and the restart logic only see the [`Spawner`] trait, so they never know whether a
//! worker is a child process (the [`process`] backend, which runs anywhere) or a transient
//! systemd unit. A backend starts the process and reports when it is gone; readiness, routing
//! and replacement are decided above it.

pub mod process;
pub mod systemd;

use crate::config::AppName;
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A worker's number, unique for the life of the manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A generation: every restart creates the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Everything a backend needs to start one worker.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub app: AppName,
    pub id: WorkerId,
    pub generation: Generation,
    /// The argv, `{port}` already substituted.
    pub argv: Vec<String>,
    /// The generation's pinned release directory (symlinks resolved).
    pub directory: Option<PathBuf>,
    /// The config's environment plus `PORT`.
    pub environment: BTreeMap<String, String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub port: u16,
    /// CPU priority until it is ready (raised by [`Spawner::booted`]).
    pub boot_cpu: crate::config::BootCpuWeight,
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The process exited with this status.
    Exited(i32),
    /// The process was killed by this signal.
    Signaled(i32),
    /// The backend saw it fail in another way (e.g. a unit's `Result=`).
    Failed(String),
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Exited(code) => write!(f, "exited with status {code}"),
            ExitReason::Signaled(sig) => {
                let name = nix::sys::signal::Signal::try_from(*sig)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| format!("signal {sig}"));
                write!(f, "was killed by {name}")
            }
            ExitReason::Failed(why) => f.write_str(why),
        }
    }
}

/// The last lines a worker wrote, kept so that a spawn failure can say why.
#[derive(Clone, Debug, Default)]
pub struct OutputTail(Arc<Mutex<VecDeque<String>>>);

impl OutputTail {
    const LINES: usize = 20;
    /// The most characters [`OutputTail::summary`] gives, so that a journal entry stays one
    /// readable line whatever the worker wrote.
    const SUMMARY_CHARS: usize = 300;
    /// A last line shorter than this rarely says what went wrong alone (`Error: boom`,
    /// `KeyError: 'PORT'`): the summary gives it the lines before it as context.
    const SHORT_LINE: usize = 40;

    /// Keep a line of output. Blank lines are dropped: they would take the place of lines
    /// that say something, and a failure's report would end in nothing.
    pub fn push(&self, line: String) {
        let line = match line.trim_end() {
            "" => return,
            kept if kept.len() == line.len() => line,
            kept => kept.to_owned(),
        };
        if let Ok(mut q) = self.0.lock() {
            if q.len() == Self::LINES {
                q.pop_front();
            }
            q.push_back(line);
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What a one-line report of a failure quotes of the worker's output: the last line that
    /// says something, trimmed, and when it is short the one or two lines before it, joined by
    /// `" | "`, at most [`Self::SUMMARY_CHARS`] characters; `None` when it wrote nothing.
    ///
    /// Node, Ruby and Java print an uncaught exception's message first and its indented stack
    /// frames after it (`    at f (main.js:3:9)`, `\tfrom app.rb:3`), Node then its version
    /// (`Node.js v20.11.0`): those are passed over for the last unindented line, the message.
    /// (Python's traceback ends in its message.) Output that is all indented gives its last line.
    pub fn summary(lines: &[String]) -> Option<String> {
        let said: Vec<&str> = lines
            .iter()
            .map(|l| l.trim_end())
            .filter(|l| !l.trim_start().is_empty())
            .collect();
        let frame = |l: &str| {
            let t = l.trim_start();
            t.len() != l.len()
                || t.strip_prefix("Node.js v")
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        };
        let last = said
            .iter()
            .rposition(|l| !frame(l))
            .or(said.len().checked_sub(1))?;
        let mut summary = clip(said[last].trim(), Self::SUMMARY_CHARS);
        if summary.chars().count() < Self::SHORT_LINE {
            // Lines of punctuation alone (a caret under the failing code) carry no words.
            let before = said[..last]
                .iter()
                .rev()
                .map(|l| l.trim())
                .filter(|l| l.chars().any(char::is_alphanumeric))
                .take(2);
            for line in before {
                let longer = format!("{line} | {summary}");
                if longer.chars().count() > Self::SUMMARY_CHARS {
                    break;
                }
                summary = longer;
            }
        }
        Some(summary)
    }
}

/// `s` cut to at most `max` characters, the cut marked with `…`.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let end = s
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(s.len(), |(i, _)| i);
    format!("{}…", &s[..end])
}

/// A worker that a backend started.
#[derive(Clone, Debug)]
pub struct StartedWorker {
    pub pid: Option<u32>,
    /// The systemd unit, when the backend runs workers as units.
    pub unit: Option<String>,
    /// Becomes `Some` once the worker is gone.
    pub exited: watch::Receiver<Option<ExitReason>>,
    pub output: OutputTail,
}

impl StartedWorker {
    /// Wait until the worker is gone.
    pub async fn wait_exit(&self) -> ExitReason {
        let mut rx = self.exited.clone();
        match rx.wait_for(|e| e.is_some()).await {
            Ok(e) => e.clone().unwrap_or(ExitReason::Failed("gone".into())),
            // The watcher is gone without a verdict: the backend lost track of it.
            Err(_) => ExitReason::Failed("lost track of the process".into()),
        }
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exited.borrow().clone()
    }
}

/// CPU time and memory of a worker, as the backend sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Total CPU time used, user + system.
    pub cpu_time: Duration,
    pub memory_bytes: u64,
}

/// Errors of a backend, each naming the worker (and its unit, where there is one).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("worker {worker}: cannot start {program:?}: {error}")]
    Start {
        worker: WorkerId,
        program: String,
        error: std::io::Error,
    },
    #[error("worker {worker}: unknown user or group {name:?}")]
    UnknownUser { worker: WorkerId, name: String },
    #[error("worker {worker}: {message}")]
    Backend { worker: WorkerId, message: String },
}

/// A way of running workers.
#[async_trait]
pub trait Spawner: Send + Sync + 'static {
    /// Short name for logs and status: "process" or "systemd".
    fn name(&self) -> &'static str;

    /// Start the worker's process. Returns once it is started, not once it is ready.
    async fn start(&self, spec: &WorkerSpec) -> Result<StartedWorker, SpawnError>;

    /// Stop the worker: SIGTERM, then SIGKILL after `timeout`. Returns once it is gone.
    async fn stop(&self, id: WorkerId, worker: &StartedWorker, timeout: Duration);

    /// The worker is ready: give it the normal CPU priority that it booted without.
    async fn booted(&self, worker: &StartedWorker) {
        let _ = worker;
    }

    /// CPU and memory of the whole worker, if the backend can tell. `measured` is the sum over
    /// the worker's [`processes`](Spawner::processes) from /proc, taken by the caller on the
    /// blocking pool; a backend with its own accounting (a unit's cgroup) prefers that.
    async fn usage(&self, worker: &StartedWorker, measured: Option<Usage>) -> Option<Usage> {
        let _ = worker;
        measured
    }

    /// The worker's processes (the worker itself and what it started), to make sure that what
    /// answers on the worker's port is the worker and not a stray. Reads /proc or the cgroup
    /// file system: blocking, call it from `spawn_blocking`.
    fn processes(&self, worker: &StartedWorker) -> Vec<u32> {
        // The process backend starts each worker as the leader of its own process group, and
        // stops the group: what left the group is not the worker's.
        let Some(leader) = worker.pid else {
            return Vec::new();
        };
        descendants(leader)
            .into_iter()
            .filter(|p| *p == leader || process_group(*p) == Some(leader))
            .collect()
    }

    /// Workers a previous baton left running (systemd units survive a restart of baton).
    async fn adopt(&self) -> Vec<Adopted> {
        Vec::new()
    }

    /// Whether workers outlive the manager: then stopping baton leaves them to the service
    /// manager (which stops them on `systemctl stop` and keeps them on `systemctl restart`).
    fn workers_outlive_manager(&self) -> bool {
        false
    }
}

/// A running worker found at start, to be taken over if it is ready.
#[derive(Debug)]
pub struct Adopted {
    pub id: WorkerId,
    pub generation: Generation,
    pub port: u16,
    pub directory: Option<PathBuf>,
    pub process: StartedWorker,
}

/// The fields of /proc/PID/stat after the command name, starting with the state (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The usage of a set of processes (a worker's group: a gunicorn master and its workers), the
/// sum of each one's CPU time and resident memory (pages shared between them count in each).
/// `None` when none of them could be read. Reads /proc: blocking.
pub fn group_usage(pids: &[u32]) -> Option<Usage> {
    pids.iter()
        .filter_map(|p| proc_usage(*p))
        .fold(None, |sum: Option<Usage>, u| {
            let s = sum.unwrap_or_default();
            Some(Usage {
                cpu_time: s.cpu_time + u.cpu_time,
                memory_bytes: s.memory_bytes + u.memory_bytes,
            })
        })
}

/// Usage from /proc/PID (the fallback where no cgroup accounting is at hand).
pub fn proc_usage(pid: u32) -> Option<Usage> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let ticks = clock_ticks();
    let page = page_size();
    Some(Usage {
        cpu_time: Duration::from_secs_f64((utime + stime) as f64 / ticks as f64),
        memory_bytes: rss_pages * page,
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// `pid` and every process below it, from /proc/PID/task/TID/children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() && all.len() < 100_000 {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                    all.extend(
                        text.split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    all
}

/// The processes of a cgroup (v2), from its `cgroup.procs`.
pub fn cgroup_processes(cgroup: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/sys/fs/cgroup{cgroup}/cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The process group of `pid`, from /proc.
pub fn process_group(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// The cgroup of `pid` (the cgroup v2 line of /proc/PID/cgroup).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// A free loopback port for a new worker, none of `taken`.
///
/// A port is free only until someone binds it, and a booting worker binds its port late: the
/// kernel can hand the same port out again meanwhile (a few times in a hundred draws of 30), so
/// the ports of the workers baton already has are refused.
pub fn free_port(taken: &[u16]) -> std::io::Result<u16> {
    let mut last = 0;
    for _ in 0..16 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        last = l.local_addr()?.port();
        if !taken.contains(&last) {
            return Ok(last);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("the kernel kept handing out ports baton's workers hold (last {last})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::OutputTail;

    fn summary(lines: &[&str]) -> Option<String> {
        let tail = OutputTail::default();
        for l in lines {
            tail.push((*l).to_owned());
        }
        OutputTail::summary(&tail.lines())
    }

    #[test]
    fn blank_lines_are_not_kept_and_trailing_blanks_are_cut() {
        let tail = OutputTail::default();
        for l in ["a\r", "", "  \t", "  b  "] {
            tail.push(l.to_owned());
        }
        assert_eq!(tail.lines(), ["a", "  b"]);
    }

    #[test]
    fn the_last_line_that_says_something_is_quoted() {
        // Click (uvicorn) ends its usage error in a blank line.
        assert_eq!(
            summary(&[
                "Usage: uvicorn [OPTIONS] APP",
                "Try 'uvicorn --help' for help.",
                "",
                "Error: '$PORT' is not a valid port number.",
                "",
                "   ",
            ])
            .as_deref(),
            Some("Error: '$PORT' is not a valid port number.")
        );
        // Also from lines a backend did not filter.
        assert_eq!(
            OutputTail::summary(&[
                "Error: '$PORT' is not a valid port number.".into(),
                "".into()
            ])
            .as_deref(),
            Some("Error: '$PORT' is not a valid port number.")
        );
        assert_eq!(summary(&[]), None);
        assert_eq!(summary(&["", " "]), None);
    }

    #[test]
    fn a_short_last_line_gets_the_lines_before_it() {
        assert_eq!(
            summary(&[
                "Traceback (most recent call last):",
                "  File \"/srv/app/main.py\", line 3, in <module>",
                "    port = os.environ['PORT']",
                "KeyError: 'PORT'",
            ])
            .as_deref(),
            Some(
                "File \"/srv/app/main.py\", line 3, in <module> | port = os.environ['PORT'] | KeyError: 'PORT'"
            )
        );
    }

    #[test]
    fn stack_frames_after_the_message_are_passed_over() {
        assert_eq!(
            summary(&[
                "/srv/app/main.js:3",
                "    throw new Error('boom');",
                "    ^",
                "",
                "Error: boom",
                "    at Object.<anonymous> (/srv/app/main.js:3:11)",
                "    at Module._compile (node:internal/modules/cjs/loader:1256:14)",
                "",
                "Node.js v20.11.0",
            ])
            .as_deref(),
            Some("/srv/app/main.js:3 | throw new Error('boom'); | Error: boom")
        );
        assert_eq!(
            summary(&[
                "/srv/app/config.ru:1:in `<main>': uninitialized constant Sinatra (NameError)",
                "\tfrom /usr/lib/ruby/rack/builder.rb:105:in `eval'",
            ])
            .as_deref(),
            Some("/srv/app/config.ru:1:in `<main>': uninitialized constant Sinatra (NameError)")
        );
        // Output that is all indented: its last line.
        assert_eq!(
            summary(&[
                "  started",
                "  could not bind 127.0.0.1:8080: address already in use"
            ])
            .as_deref(),
            Some("could not bind 127.0.0.1:8080: address already in use")
        );
    }

    #[test]
    fn the_quote_is_bounded() {
        let long = "é".repeat(1000);
        let s = summary(&[&long]).unwrap_or_default();
        assert_eq!(s.chars().count(), 300);
        assert!(s.ends_with('…'));
        // Context that would not fit is left out, the line itself kept.
        let s = summary(&[&"x".repeat(296), "short"]).unwrap_or_default();
        assert_eq!(s, "short");
    }
}
