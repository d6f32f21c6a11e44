//! One restart: rolling (spawn new, wait ready, drain old, stop old; `max_surge` at a time) or
//! blocking (stop all, spawn all).
//!
//! A roll converges on "`target` ready workers of the new generation and none older", reading
//! the pool afresh at every step, so a worker that dies mid-roll or a worker left by a
//! superseded roll is simply one more to replace.

use super::worker::{self, BootError, SpawnFailure};
use super::{Context, RestartMode, WaitingOn};
use crate::pool::{WorkerState, WorkerView};
use crate::spawn::{Generation, WorkerId};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Workers of the new generation that died while ready, as the supervisor saw them.
pub type Deaths = tokio::sync::mpsc::UnboundedReceiver<SpawnFailure>;

#[derive(Debug)]
pub enum RollResult {
    Done,
    /// A new worker failed and resistance is on: the old workers keep serving.
    Resisting(SpawnFailure),
    Failed {
        message: String,
        output: Vec<String>,
    },
    Cancelled,
}

pub async fn run(
    ctx: &Arc<Context>,
    generation: Generation,
    mode: RestartMode,
    target: usize,
    cancel: &CancellationToken,
    deaths: &mut Deaths,
) -> RollResult {
    if let Err(e) = ctx.pin_generation(generation) {
        let failure = SpawnFailure {
            worker: None,
            reason: format!("generation {generation} could not start: {e}"),
            output: Vec::new(),
        };
        return match (mode, ctx.config().restart.resist_deployment_errors) {
            (RestartMode::Rolling, true) => RollResult::Resisting(failure),
            _ => RollResult::Failed {
                message: failure.reason,
                output: Vec::new(),
            },
        };
    }
    match mode {
        RestartMode::Rolling => rolling(ctx, generation, target, cancel, deaths).await,
        RestartMode::Blocking => blocking(ctx, generation, target, cancel).await,
    }
}

fn progress(ctx: &Context, generation: Generation, waiting_on: WaitingOn) {
    let done = ctx
        .pool
        .workers()
        .iter()
        .filter(|w| w.generation == generation && w.state == WorkerState::Ready)
        .count();
    ctx.update(|s| {
        if let Some(p) = s.rolling_mut() {
            p.done = done.min(p.total);
            p.waiting_on = waiting_on;
        }
    });
}

async fn rolling(
    ctx: &Arc<Context>,
    generation: Generation,
    target: usize,
    cancel: &CancellationToken,
    deaths: &mut Deaths,
) -> RollResult {
    let surge = ctx.config().restart.max_surge.get();
    let resist = ctx.config().restart.resist_deployment_errors;
    // Old workers kept because their replacement failed (only without resistance).
    let mut kept: BTreeSet<WorkerId> = BTreeSet::new();
    let mut failures: Vec<SpawnFailure> = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return RollResult::Cancelled;
        }
        // A new worker that died after it proved itself (a death within its settle period is
        // already one of `failures`): the release dies a while after it starts, and rolling
        // on would only spawn more of it while the old workers go. Judged at once, with or
        // without resistance.
        while let Ok(death) = deaths.try_recv() {
            if failures.iter().any(|f| f.worker == death.worker) {
                continue;
            }
            if resist {
                return RollResult::Resisting(death);
            }
            return RollResult::Failed {
                message: format!("{death}; the restart stopped there"),
                output: death.output,
            };
        }
        let workers = ctx.pool.workers();
        let new_alive = workers
            .iter()
            .filter(|w| w.generation == generation && w.state.is_alive())
            .count();
        let mut old: Vec<&WorkerView> = workers
            .iter()
            .filter(|w| w.generation != generation && w.state.is_alive() && !kept.contains(&w.id))
            .collect();
        // Oldest generation first, then the least busy.
        old.sort_by_key(|w| (w.generation, w.in_flight, w.id));
        if old.is_empty() && new_alive + kept.len() >= target {
            break;
        }
        let alive = workers.iter().filter(|w| w.state.is_alive()).count();
        let want = target.saturating_sub(new_alive + kept.len());
        let room = (target + surge).saturating_sub(alive);
        let batch = want.min(room);
        if batch == 0 {
            let Some(w) = old.first() else { break };
            progress(ctx, generation, WaitingOn::Draining(w.id));
            worker::drain_and_stop(ctx, w.id).await;
            continue;
        }
        progress(
            ctx,
            generation,
            WaitingOn::Spawning {
                count: batch,
                generation,
            },
        );
        let results = futures_util::future::join_all(
            (0..batch).map(|_| worker::spawn(ctx, generation, cancel)),
        )
        .await;
        let mut ready_ids = Vec::new();
        let mut cancelled = false;
        for r in results {
            match r {
                Ok(id) => ready_ids.push(id),
                Err(BootError::Cancelled) => cancelled = true,
                Err(BootError::Failed(f)) => failures.push(f),
            }
        }
        if cancelled {
            return abandon(ctx, &ready_ids).await;
        }
        // No old worker is drained before its replacement has proven itself: a new worker
        // that dies within the settle period is a deployment error like one that never came up.
        if !ready_ids.is_empty() {
            progress(
                ctx,
                generation,
                WaitingOn::Settling {
                    workers: ready_ids.clone(),
                    settle: ctx.config().readiness.settle.get(),
                },
            );
            match worker::settle(ctx, &ready_ids, cancel).await {
                Err(BootError::Cancelled) => return abandon(ctx, &ready_ids).await,
                Err(BootError::Failed(f)) => {
                    ready_ids.retain(|id| {
                        ctx.pool
                            .get(*id)
                            .is_some_and(|w| w.state == WorkerState::Ready)
                    });
                    failures.push(f);
                }
                Ok(()) => {}
            }
        }
        let ready = ready_ids.len();
        if let Some(f) = failures.last()
            && resist
        {
            return RollResult::Resisting(f.clone());
        }
        // Each failure keeps one old worker serving in place of the new one that is missing.
        let failed_now = batch - ready;
        for w in old.iter().take(failed_now) {
            kept.insert(w.id);
        }
        for w in old.iter().skip(failed_now).take(ready) {
            if cancel.is_cancelled() {
                return RollResult::Cancelled;
            }
            progress(ctx, generation, WaitingOn::Draining(w.id));
            worker::drain_and_stop(ctx, w.id).await;
        }
        if old.is_empty() && failed_now > 0 {
            // Nothing left to keep in its place: the supervisor retries it with backoff.
            break;
        }
    }
    progress(ctx, generation, WaitingOn::Done);
    match failures.last() {
        None => RollResult::Done,
        Some(last) => RollResult::Failed {
            message: format!(
                "{} of {target} workers could not be replaced; the last: {last}",
                failures.len().min(target)
            ),
            output: last.output.clone(),
        },
    }
}

/// The roll was cancelled while new workers had not yet proven themselves (within
/// `readiness.settle`): stop them. Left ready, the next roll would count them as capacity and
/// drain proven workers for them, and a release that dies within its settle period would then
/// take the whole pool down with it.
async fn abandon(ctx: &Arc<Context>, unproven: &[WorkerId]) -> RollResult {
    for id in unproven {
        tracing::info!(
            app = %ctx.config().name, worker = id.0,
            "stopping worker {id}: its restart was cancelled before it proved itself"
        );
    }
    futures_util::future::join_all(unproven.iter().map(|id| worker::stop(ctx, *id))).await;
    RollResult::Cancelled
}

async fn blocking(
    ctx: &Arc<Context>,
    generation: Generation,
    target: usize,
    cancel: &CancellationToken,
) -> RollResult {
    let old: Vec<WorkerId> = ctx.pool.workers().iter().map(|w| w.id).collect();
    progress(ctx, generation, WaitingOn::StoppingAll(old.len()));
    // Mark them all first so that no request goes to any of them meanwhile: requests queue.
    for id in &old {
        ctx.pool.start_draining(*id);
    }
    futures_util::future::join_all(old.iter().map(|id| worker::drain_and_stop(ctx, *id))).await;
    if cancel.is_cancelled() {
        return RollResult::Cancelled;
    }
    progress(
        ctx,
        generation,
        WaitingOn::Spawning {
            count: target,
            generation,
        },
    );
    let results =
        futures_util::future::join_all((0..target).map(|_| worker::spawn(ctx, generation, cancel)))
            .await;
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(_) => {}
            Err(BootError::Cancelled) => return RollResult::Cancelled,
            Err(BootError::Failed(f)) => failures.push(f),
        }
    }
    progress(ctx, generation, WaitingOn::Done);
    match failures.last() {
        None => RollResult::Done,
        Some(last) => RollResult::Failed {
            message: format!(
                "{} of {target} workers failed to start (they are retried with backoff); the last: {last}",
                failures.len()
            ),
            output: last.output.clone(),
        },
    }
}
