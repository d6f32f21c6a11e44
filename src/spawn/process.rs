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

#[derive(Debug, Default)]
pub struct ProcessSpawner;

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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &spec.directory {
            cmd.current_dir(dir);
        }
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
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
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
            let reason = match child.wait().await {
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

/// Log a worker's output line by line, keeping the tail for spawn-failure reports.
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    tail: OutputTail,
    worker: WorkerId,
    pid: Option<u32>,
    fd: &'static str,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "baton::worker", worker = worker.0, pid, fd, "{line}");
        tail.push(line);
    }
}
