//! The process backend: workers are children of `baton run`.
//!
//! It needs no systemd, so the whole manager runs and is tested on any Linux machine, and it is
//! what `baton demo` uses. Each worker gets its own process group so that stopping it also stops
//! whatever it forked, and a parent-death signal so that no worker outlives a crashed manager.

use super::{ExitReason, OutputTail, SpawnError, Spawner, StartedWorker, WorkerId, WorkerSpec};
use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

/// The environment variable that names a worker's manager (its control socket path).
const ENV_OWNER: &str = "BATON_OWNER";

#[derive(Debug)]
pub struct ProcessSpawner {
    /// What `BATON_OWNER` says in this manager's workers: its control socket, unique per
    /// running manager (a second one cannot bind it).
    owner: String,
}

impl ProcessSpawner {
    pub fn new(control_socket: &std::path::Path) -> ProcessSpawner {
        ProcessSpawner {
            owner: control_socket.display().to_string(),
        }
    }

    /// Kill the processes a previous manager with this control socket left behind (it was
    /// killed, so its workers' children lost their parent-death signal's protection). Call
    /// once the control socket is bound: no other live manager owns that path then. Reads
    /// /proc: blocking.
    pub fn sweep_strays(&self) -> usize {
        let needle = format!("{ENV_OWNER}={}", self.owner);
        let me = std::process::id();
        let mut killed = 0;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                tracing::warn!(
                    pid,
                    "stopping process {pid} left by a previous baton of this app"
                );
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                killed += 1;
            }
        }
        killed
    }
}

#[async_trait]
impl Spawner for ProcessSpawner {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &WorkerSpec) -> Result<StartedWorker, SpawnError> {
        let program = spec.argv.first().cloned().unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&spec.argv[1..])
            .envs(&spec.environment)
            // Marks the worker's processes as this manager's, so that strays left by a manager
            // that was killed are found at the next start (see `sweep_strays`).
            .env(ENV_OWNER, &self.owner)
            .env("BATON_APP", spec.app.as_str())
            .env("BATON_WORKER", spec.id.to_string())
            .env("BATON_GENERATION", spec.generation.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &spec.directory {
            cmd.current_dir(dir);
        }
        run_as(&mut cmd, spec)?;
        // A booting worker runs at low priority; only a privileged baton can give it the normal
        // priority back once it is ready (lowering a nice value needs CAP_SYS_NICE), so an
        // unprivileged one leaves the priority alone.
        let boot_nice = if nix::unistd::geteuid().is_root() {
            spec.boot_cpu.nice()
        } else {
            0
        };
        // SAFETY: prctl and setpriority are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                if boot_nice != 0 {
                    libc::setpriority(libc::PRIO_PROCESS, 0, boot_nice);
                }
                // SIGKILL, not SIGTERM: a worker that ignores SIGTERM must not outlive a
                // manager that was killed (nobody would escalate).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|error| SpawnError::Start {
            worker: spec.id,
            program: program.clone(),
            error,
        })?;
        let pid = child.id();
        let output = OutputTail::default();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, output.clone(), spec.id, pid, "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, output.clone(), spec.id, pid, "stderr"));
        }
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let waited = child.wait().await;
            // What the worker started must not outlive it: its whole group goes with it. The
            // group id stays reserved while any member lives, so this cannot hit a stranger.
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let reason = match waited {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => ExitReason::Exited(code),
                    (None, Some(sig)) => ExitReason::Signaled(sig),
                    _ => ExitReason::Failed("ended with an unknown status".into()),
                },
                Err(e) => ExitReason::Failed(format!("cannot wait for the process: {e}")),
            };
            let _ = tx.send(Some(reason));
        });
        Ok(StartedWorker {
            pid,
            unit: None,
            exited: rx,
            output,
        })
    }

    async fn booted(&self, worker: &StartedWorker) {
        if let Some(pid) = worker.pid
            && nix::unistd::geteuid().is_root()
        {
            // The whole group: what the worker forked while booting too.
            // SAFETY: plain setpriority(2) on a process group id.
            unsafe { libc::setpriority(libc::PRIO_PGRP, pid, 0) };
        }
    }

    async fn stop(&self, id: WorkerId, worker: &StartedWorker, timeout: Duration) {
        let Some(pid) = worker.pid else { return };
        if worker.exit_reason().is_some() {
            return;
        }
        let group = Pid::from_raw(pid as i32);
        // ESRCH only means it is already gone, which the exit watcher reports.
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(timeout, worker.wait_exit())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = id.0,
                pid,
                "worker did not stop within {timeout:?} of SIGTERM; sending SIGKILL"
            );
            let _ = killpg(group, Signal::SIGKILL);
            worker.wait_exit().await;
        } else {
            // Children the worker forked in its group must not outlive it.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// The worker's `user` and `group`, by name, looked up now: a name the machine does not know
/// fails this spawn, not the exec.
fn run_as(cmd: &mut tokio::process::Command, spec: &WorkerSpec) -> Result<(), SpawnError> {
    if let Some(user) = &spec.user {
        let u = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .ok_or_else(|| SpawnError::UnknownUser {
                worker: spec.id,
                name: user.clone(),
            })?;
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    if let Some(group) = &spec.group {
        let g = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| SpawnError::UnknownUser {
                worker: spec.id,
                name: group.clone(),
            })?;
        cmd.gid(g.gid.as_raw());
    }
    Ok(())
}

/// The longest output line kept whole; the rest of a longer one is dropped.
const MAX_LINE: usize = 16 << 10;

/// Log a worker's output line by line, keeping the tail for spawn-failure reports. Reads until
/// the worker closes its end, whatever it writes (invalid UTF-8 is shown lossily, endless lines
/// are cut at `MAX_LINE`): closing the pipe early would break the worker's next write.
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    tail: OutputTail,
    worker: WorkerId,
    pid: Option<u32>,
    fd: &'static str,
) {
    let mut reader = BufReader::with_capacity(8 << 10, stream);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut warned = false;
    loop {
        let (done, used, eof) = match reader.fill_buf().await {
            Ok([]) => (true, 0, true),
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    take(&mut line, &buf[..i], &mut cut);
                    (true, i + 1, false)
                }
                None => {
                    take(&mut line, buf, &mut cut);
                    (false, buf.len(), false)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => (true, 0, true),
        };
        reader.consume(used);
        if done && (!line.is_empty() || cut || !eof) {
            let text = String::from_utf8_lossy(&line).into_owned();
            if cut && !warned {
                warned = true;
                tracing::warn!(
                    worker = worker.0,
                    pid,
                    fd,
                    "worker {worker} wrote a line longer than {} KiB on {fd}; such lines are cut",
                    MAX_LINE >> 10
                );
            }
            tracing::info!(target: "baton::worker", worker = worker.0, pid, fd, "{text}");
            tail.push(text);
            line.clear();
            cut = false;
        }
        if eof {
            return;
        }
    }
}

/// Append to a line up to `MAX_LINE` bytes, noting when some were dropped.
fn take(line: &mut Vec<u8>, bytes: &[u8], cut: &mut bool) {
    let room = MAX_LINE.saturating_sub(line.len());
    if bytes.len() > room {
        *cut = true;
    }
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}
