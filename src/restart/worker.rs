//! Starting one worker until it is ready, and draining and stopping one.

use super::{Context, Event};
use crate::journal;
use crate::pool::Worker;
use crate::readiness;
use crate::spawn::{Generation, WorkerId, WorkerSpec, free_port};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A worker that did not come up: which, why, and what it last wrote.
#[derive(Clone, Debug)]
pub struct SpawnFailure {
    /// `None` when the roll failed before any worker was started (its release directory).
    pub worker: Option<WorkerId>,
    pub reason: String,
    pub output: Vec<String>,
}

impl fmt::Display for SpawnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.worker {
            Some(w) => write!(f, "worker {w} {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

#[derive(Debug)]
pub enum BootError {
    Failed(SpawnFailure),
    /// The job that asked for the worker was cancelled; the worker was stopped.
    Cancelled,
}

/// Start a worker of `generation` and wait until it is ready. On cancellation the worker is
/// stopped and gone from the pool before this returns; on failure it is `stopping` (a task
/// stops it), so the failure is known at once.
pub async fn spawn(
    ctx: &Arc<Context>,
    generation: Generation,
    cancel: &CancellationToken,
) -> Result<WorkerId, BootError> {
    let config = ctx.config_of(generation);
    let id = ctx.next_worker_id();
    let app = &config.name;
    let fail = |reason: String, output: Vec<String>| {
        BootError::Failed(SpawnFailure {
            worker: Some(id),
            reason,
            output,
        })
    };
    if ctx.directory(generation).is_none() && config.app.directory.is_some() {
        // The first generation's directory could not be pinned at start; try again now.
        ctx.pin_generation(generation)
            .map_err(|e| fail(format!("could not start: {e}"), Vec::new()))?;
    }
    let taken: Vec<u16> = ctx.pool.workers().iter().map(|w| w.addr.port()).collect();
    let port =
        free_port(&taken).map_err(|e| fail(format!("could not get a port: {e}"), Vec::new()))?;
    let mut environment = config.app.environment.clone();
    environment.insert("PORT".into(), port.to_string());
    let spec = WorkerSpec {
        app: config.name.clone(),
        id,
        generation,
        argv: config.app.command.argv_for_port(port),
        directory: ctx.directory(generation),
        environment,
        user: config.app.user.clone(),
        group: config.app.group.clone(),
        port,
        boot_cpu: config.restart.boot_cpu_weight,
    };
    let started_at = Instant::now();
    // A start job that systemd holds up does not hold up baton's stop: the unit, should it
    // start after all, is systemd's to stop with baton's service (or the next baton adopts it).
    let started = tokio::select! {
        s = ctx.spawner.start(&spec) => s,
        _ = ctx.stopping.cancelled() => return Err(BootError::Cancelled),
    };
    let process = started.map_err(|e| fail(format!("could not start: {e}"), Vec::new()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tracing::info!(
        app = %app, worker = id.0, generation = generation.0, pid = process.pid,
        unit = process.unit.as_deref(), "spawning worker {id} on {addr}"
    );
    let mut w = Worker::new(id, generation, addr, process.clone());
    w.spawned_at = started_at;
    ctx.pool.insert(w);
    watch_exit(ctx, id, generation, process.clone());

    let ready = wait_ready(ctx, &config, id, addr, &process, cancel).await;
    match ready {
        Some(Ok(())) => {
            ctx.pool.warm_up(id, config.readiness.settle.get());
            if spec.boot_cpu != crate::config::BootCpuWeight::Normal {
                ctx.spawner.booted(&process).await;
            }
            tracing::info!(
                app = %app, worker = id.0, generation = generation.0, pid = process.pid,
                unit = process.unit.as_deref(),
                "worker {id} ready after {:.2}s", started_at.elapsed().as_secs_f64()
            );
            Ok(id)
        }
        None => {
            stop(ctx, id).await;
            Err(BootError::Cancelled)
        }
        Some(Err(why)) => {
            // Reported now, and stopped meanwhile (its state says so): a release that never
            // answers fails the restart at readiness.timeout, not a stop_timeout later.
            ctx.pool.mark_stopping(id);
            let stopper = ctx.clone();
            ctx.tasks.spawn(async move { stop(&stopper, id).await });
            let output = process.output.lines();
            tracing::error!(
                app = %app, worker = id.0, generation = generation.0, pid = process.pid,
                unit = process.unit.as_deref(), message_id = journal::MSG_SPAWN_FAILED,
                "worker {id} {why}{}", last_line_suffix(&output)
            );
            Err(fail(why.to_string(), output))
        }
    }
}

/// Wait until the worker is ready as the pool will believe it: its probe answered, by the
/// worker itself and not a stray on its port, and marked ready while its process lives.
/// `None`: cancelled first.
async fn wait_ready(
    ctx: &Arc<Context>,
    config: &crate::config::Config,
    id: WorkerId,
    addr: SocketAddr,
    process: &crate::spawn::StartedWorker,
    cancel: &CancellationToken,
) -> Option<Result<(), readiness::NotReady>> {
    let ready = tokio::select! {
        _ = cancel.cancelled() => None,
        r = ctx.probe.ready(
            addr,
            config.readiness.http_path(),
            process,
            config.readiness.timeout.get(),
        ) => Some(r),
    };
    // What answers must be the worker, not a stray that holds its port.
    let ready = match ready {
        Some(Ok(())) => Some(check_port(ctx, process, addr.port()).await),
        other => other,
    };
    // Marked ready only if its process still lives, checked under the pool's lock.
    match ready {
        Some(Ok(())) if !ctx.pool.mark_ready(id) => Some(Err(match process.exit_reason() {
            Some(reason) => readiness::NotReady::Exited(reason),
            None => readiness::NotReady::DiedAfterProbe,
        })),
        other => other,
    }
}

/// Wait out the settle period of workers that just became ready. The first that exits within
/// it is a failure (with its exit and output); the others are left as they are.
pub async fn settle(
    ctx: &Arc<Context>,
    ids: &[WorkerId],
    cancel: &CancellationToken,
) -> Result<(), BootError> {
    let config = ctx.config();
    let settle = config.readiness.settle.get();
    let since = Instant::now();
    let watched: Vec<_> = ids
        .iter()
        .filter_map(|id| ctx.pool.process(*id).map(|p| (*id, p)))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    if watched.len() < ids.len() {
        // Gone between ready and here: its exit watcher removed it.
        let id = ids
            .iter()
            .find(|id| !watched.iter().any(|(w, _)| w == *id))
            .copied()
            .unwrap_or(WorkerId(0));
        return Err(BootError::Failed(SpawnFailure {
            worker: Some(id),
            reason: "exited just after it became ready".into(),
            output: Vec::new(),
        }));
    }
    let exits = futures_util::future::select_all(
        watched
            .iter()
            .map(|(id, p)| Box::pin(async move { (*id, p.wait_exit().await, p.output.lines()) })),
    );
    tokio::select! {
        _ = cancel.cancelled() => Err(BootError::Cancelled),
        _ = tokio::time::sleep(settle) => Ok(()),
        ((id, reason, output), _, _) = exits => {
            let lived = since.elapsed();
            let why = format!(
                "{reason} {:.1}s after it became ready (within readiness.settle, {})",
                lived.as_secs_f64(),
                humantime::format_duration(settle)
            );
            tracing::error!(
                app = %config.name, worker = id.0, message_id = journal::MSG_SPAWN_FAILED,
                "worker {id} {why}{}", last_line_suffix(&output)
            );
            // Its exit watcher took it out of the pool; make sure, whatever its state was.
            ctx.pool.remove(id);
            Err(BootError::Failed(SpawnFailure { worker: Some(id), reason: why, output }))
        }
    }
}

/// Whether the process that listens on the worker's port is one of the worker's own.
async fn check_port(
    ctx: &Arc<Context>,
    process: &crate::spawn::StartedWorker,
    port: u16,
) -> Result<(), readiness::NotReady> {
    let spawner = ctx.spawner.clone();
    let process = process.clone();
    let holder = tokio::task::spawn_blocking(move || {
        readiness::port_holder(port, &spawner.processes(&process))
    })
    .await
    .unwrap_or(readiness::PortHolder::Unknown);
    match holder {
        readiness::PortHolder::Other { uid } => Err(readiness::NotReady::PortTaken { port, uid }),
        readiness::PortHolder::Worker | readiness::PortHolder::Unknown => Ok(()),
    }
}

fn last_line_suffix(output: &[String]) -> String {
    crate::spawn::OutputTail::summary(output)
        .map(|l| format!("; its last output: {l}"))
        .unwrap_or_default()
}

/// Take over a worker a previous baton started, if it answers now.
pub async fn adopt(ctx: &Arc<Context>, a: &crate::spawn::Adopted) -> bool {
    let config = ctx.config();
    let addr = SocketAddr::from(([127, 0, 0, 1], a.port));
    ctx.pool
        .insert(Worker::new(a.id, a.generation, addr, a.process.clone()));
    watch_exit(ctx, a.id, a.generation, a.process.clone());
    let limit = ctx
        .config()
        .readiness
        .timeout
        .get()
        .min(std::time::Duration::from_secs(10));
    let http_path = config.readiness.http_path();
    match ctx.probe.ready(addr, http_path, &a.process, limit).await {
        Ok(()) if ctx.pool.mark_ready(a.id) => {
            tracing::info!(
                app = %config.name, worker = a.id.0, generation = a.generation.0,
                pid = a.process.pid, unit = a.process.unit.as_deref(),
                "adopted worker {} on {addr}", a.id
            );
            true
        }
        other => {
            let why = match other {
                Err(why) => why,
                Ok(()) => readiness::NotReady::DiedAfterProbe,
            };
            tracing::warn!(app = %config.name, worker = a.id.0, "not adopting worker {}: it {why}", a.id);
            ctx.pool.remove(a.id);
            false
        }
    }
}

/// Report a worker's death to the supervisor unless someone is already stopping it.
fn watch_exit(
    ctx: &Arc<Context>,
    id: WorkerId,
    generation: Generation,
    process: crate::spawn::StartedWorker,
) {
    let ctx = ctx.clone();
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        let reason = tokio::select! {
            r = process.wait_exit() => r,
            // Left to systemd at shutdown: nobody waits for its exit any more.
            _ = ctx.closed.cancelled() => return,
        };
        if let Some(w) = ctx.pool.remove_if_unexpected(id) {
            let _ = ctx.events.send(Event::WorkerDied {
                id,
                generation,
                reason: reason.to_string(),
                lived: w.spawned_at.elapsed(),
                ready_for: w.ready_at.map(|t| t.elapsed()),
                pid: w.process.pid,
                unit: w.process.unit.clone(),
                output: w.process.output.lines(),
            });
        }
    });
}

/// Stop a worker now (SIGTERM, then SIGKILL after `stop_timeout`) and take it out of the pool.
pub async fn stop(ctx: &Context, id: WorkerId) {
    let config = ctx.config();
    ctx.pool.mark_stopping(id);
    if let Some(process) = ctx.pool.process(id) {
        let timeout = config.restart.stop_timeout.get();
        let stopping = ctx.spawner.stop(id, &process, timeout);
        tokio::pin!(stopping);
        // The backend escalates to SIGKILL at `stop_timeout`: say so when it comes to that.
        if tokio::time::timeout(timeout, stopping.as_mut())
            .await
            .is_err()
        {
            ctx.note_stop(
                id,
                super::Escalation::Killed {
                    at: std::time::SystemTime::now(),
                    stop_timeout: timeout,
                },
            );
            stopping.await;
        }
    }
    ctx.pool.remove(id);
}

/// Give a worker no new requests, wait for its in-flight ones (up to `drain_timeout`), stop it.
pub async fn drain_and_stop(ctx: &Context, id: WorkerId) {
    let config = ctx.config();
    ctx.pool.start_draining(id);
    let limit = config.restart.drain_timeout.get();
    let idle = tokio::select! {
        idle = ctx.pool.wait_idle(id, limit) => idle,
        // Baton is stopping: the worker stays draining (no new requests), its requests run
        // on, and the shutdown stops it with the others once the client connections drained.
        _ = ctx.stopping.cancelled() => return,
    };
    if !idle && let Some(w) = ctx.pool.get(id) {
        tracing::warn!(
            app = %config.name, worker = id.0, generation = w.generation.0, pid = w.pid,
            unit = w.unit.as_deref(),
            "worker {id} still has {} requests in flight after drain_timeout ({}); stopping it anyway",
            w.in_flight, humantime::format_duration(limit)
        );
        ctx.pool.mark_cut(id);
        ctx.note_stop(
            id,
            super::Escalation::DrainDeadline {
                at: std::time::SystemTime::now(),
                in_flight: w.in_flight,
                drain_timeout: limit,
            },
        );
    }
    stop(ctx, id).await;
}
