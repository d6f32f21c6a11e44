//! One restart: rolling (spawn new, wait ready, drain old, stop old; `max_surge` at a time) or
//! blocking (stop all, spawn all).
//!
//! A roll converges on "`target` ready workers of the new generation and none older", reading
//! the pool afresh at every step, so a worker that dies mid-roll or a worker left by a
//! superseded roll is simply one more to replace.

use super::worker::{self, BootError, SpawnFailure};
use super::{Context, RestartMode, WaitingOn};
use crate::canary::{Comparison, Looks, Share, Tally, Verdict};
use crate::config::{CanaryConfig, OnInconclusive};
use crate::pool::{WorkerState, WorkerView};
use crate::spawn::{Generation, WorkerId};
use crate::state::CanaryProgress;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Workers of the new generation that died while ready, as the supervisor saw them.
pub type Deaths = tokio::sync::mpsc::UnboundedReceiver<SpawnFailure>;

#[derive(Debug)]
pub enum RollResult {
    Done,
    /// A new worker failed and resistance is on: the old workers keep serving.
    Resisting(SpawnFailure),
    /// The canary judge found the new generation worse than the old one (or could not judge
    /// it, with `on_inconclusive = "resist"`); its workers are stopped. Resistance, when it
    /// is on; else the old generation simply stays.
    Rejected(SpawnFailure),
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
    canary: bool,
) -> RollResult {
    // A rollback pinned its generation to an earlier release already.
    let pinned = match ctx.pinned(generation) {
        Some(_) => Ok(()),
        None => ctx.pin_generation(generation),
    };
    if let Err(e) = pinned {
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
        RestartMode::Rolling => rolling(ctx, generation, target, cancel, deaths, canary).await,
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

#[allow(
    clippy::too_many_lines,
    reason = "one loop of the roll, batch by batch: the workers kept, the failures and the \
              canary's judge carry from one batch to the next, and split they would be passed \
              around"
)]
async fn rolling(
    ctx: &Arc<Context>,
    generation: Generation,
    target: usize,
    cancel: &CancellationToken,
    deaths: &mut Deaths,
    with_canary: bool,
) -> RollResult {
    let surge = ctx.config().restart.max_surge.get();
    let resist = ctx.config().restart.resist_deployment_errors;
    // Old workers kept because their replacement failed (only without resistance).
    let mut kept: BTreeSet<WorkerId> = BTreeSet::new();
    let mut failures: Vec<SpawnFailure> = Vec::new();
    let canary = ctx.config().canary.clone();
    // Set once the canary phase began: from then on the new generation is judged.
    let mut judged: Option<Judged> = None;
    loop {
        if cancel.is_cancelled() {
            return RollResult::Cancelled;
        }
        // A new worker that died after it proved itself (a death within its settle period is
        // already one of `failures`): the release dies a while after it starts, and rolling
        // on would only spawn more of it while the old workers go. Judged at once, with or
        // without resistance.
        if let Some(death) = next_death(deaths, &failures) {
            return died(death, resist);
        }
        // Judged all the way: the canary's figures go on counting until the roll ends.
        if let Some(j) = judged.as_mut()
            && let Some(failure) = j.look(ctx, false)
        {
            return reject(ctx, generation, target, failure, cancel).await;
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
            if with_canary {
                worker::drain_and_stop(ctx, w.id).await;
            } else {
                // A rollback (no canary): what it replaces is the release that failed.
                retire(ctx, w.id).await;
            }
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
        // The canary's judging begins with the new generation's first request, not after its
        // settle period: a release that fails outright has served its share of visitors by
        // then (issue 36). Its window opens as the first batch is spawned.
        let mut early = (with_canary && judged.is_none() && canary.workers > 0)
            .then(|| Judged::start(ctx, generation, batch));
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
        if let Some(j) = early.as_mut().filter(|_| !ready_ids.is_empty()) {
            j.serving = Some(Instant::now());
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
            let settled = worker::settle(ctx, &ready_ids, cancel);
            let settled = match early.as_mut() {
                Some(j) => match j.during(ctx, settled).await {
                    Ok(settled) => settled,
                    Err(failure) => return reject(ctx, generation, target, failure, cancel).await,
                },
                None => settled.await,
            };
            match settled {
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
        // The canary: once its first new workers have settled, and before any old worker
        // goes, they serve beside the old ones while the judge compares the two.
        let new_ready = ctx
            .pool
            .workers()
            .iter()
            .filter(|w| w.generation == generation && w.state == WorkerState::Ready)
            .count();
        if with_canary
            && judged.is_none()
            && canary.workers > 0
            && new_ready >= canary.workers.min(target)
        {
            let mut j = early
                .take()
                .unwrap_or_else(|| Judged::start(ctx, generation, new_ready));
            j.workers = new_ready;
            match j.canary(ctx, &canary, cancel, deaths, &failures).await {
                Phase::Passed => judged = Some(j),
                Phase::Rejected(failure) => {
                    return reject(ctx, generation, target, failure, cancel).await;
                }
                Phase::Died(death) => return died(death, resist),
                Phase::Cancelled => return RollResult::Cancelled,
            }
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
            if with_canary {
                worker::drain_and_stop(ctx, w.id).await;
            } else {
                // A rollback (no canary): what it replaces is the release that failed.
                retire(ctx, w.id).await;
            }
        }
        if old.is_empty() && failed_now > 0 {
            // Nothing left to keep in its place: the supervisor retries it with backoff.
            break;
        }
    }
    // The last look, on everything the new generation served during the roll.
    if let Some(j) = judged.as_mut()
        && let Some(failure) = j.look(ctx, true)
    {
        return reject(ctx, generation, target, failure, cancel).await;
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

/// A new worker that died after it proved itself (a death within its settle period is
/// already one of `failures`), as the supervisor reported it.
fn next_death(deaths: &mut Deaths, failures: &[SpawnFailure]) -> Option<SpawnFailure> {
    while let Ok(death) = deaths.try_recv() {
        if !failures.iter().any(|f| f.worker == death.worker) {
            return Some(death);
        }
    }
    None
}

/// A release that dies a while after it starts: rolling on would only spawn more of it while
/// the old workers go. Judged at once, with or without resistance.
fn died(death: SpawnFailure, resist: bool) -> RollResult {
    if resist {
        return RollResult::Resisting(death);
    }
    RollResult::Failed {
        message: format!("{death}; the restart stopped there"),
        output: death.output,
    }
}

/// How a canary phase ended.
enum Phase {
    Passed,
    Rejected(SpawnFailure),
    Died(SpawnFailure),
    Cancelled,
}

/// The judging of a roll's new generation against the old one, from the canary's start:
/// both sides' counters then, and when the judge looks next.
struct Judged {
    generation: Generation,
    /// The generation it is judged against (the one serving when the roll began).
    old: Generation,
    /// New workers in the canary.
    workers: usize,
    began: Instant,
    /// When its first workers became ready (served their first request): `duration` counts
    /// from here, so a release that boots slowly is judged as long as a quick one.
    serving: Option<Instant>,
    new_base: Tally,
    old_base: Tally,
    /// The old generations' answer times when the window opened (the new one's begin at 0).
    old_latencies: crate::canary::Latencies,
    looks: Looks,
}

impl Judged {
    /// The judging of `generation` from its first request (its counters begin at zero: a
    /// generation is new to its roll) against the old one's from now.
    fn start(ctx: &Context, generation: Generation, workers: usize) -> Judged {
        Judged {
            generation,
            old: ctx.state().generation,
            workers,
            began: Instant::now(),
            serving: None,
            new_base: Tally::default(),
            old_base: ctx.pool.tally_before(generation),
            old_latencies: ctx.pool.latencies_before(generation),
            looks: Looks::default(),
        }
    }

    /// Both generations' figures since the canary began; processes ending inside workers
    /// are judged against the old generations' whole life (see [`Tally::lived`]).
    fn now(&self, ctx: &Context) -> Comparison {
        let old = ctx.pool.tally_before(self.generation);
        Comparison::of(
            ctx.pool.tally(self.generation).since(self.new_base),
            old.since(self.old_base).lived(old),
        )
    }

    /// Judge while `settled` (the first new workers' settle period) runs: the failure to
    /// report as soon as a look finds the new generation worse. A verdict on dropped requests
    /// alone waits up to [`DEATH_GRACE`] for the settle period to report a death, the cause
    /// of such drops, which tells the operator more.
    async fn during(
        &mut self,
        ctx: &Context,
        settled: impl std::future::Future<Output = Result<(), BootError>>,
    ) -> Result<Result<(), BootError>, SpawnFailure> {
        tokio::pin!(settled);
        let mut tick = tokio::time::interval(LOOK_TICK);
        loop {
            tokio::select! {
                done = &mut settled => return Ok(done),
                _ = tick.tick() => {
                    let Some(failure) = self.look(ctx, false) else { continue };
                    if self.now(ctx).only_drops()
                        && let Ok(Err(death)) = tokio::time::timeout(DEATH_GRACE, &mut settled).await
                    {
                        return Ok(Err(death));
                    }
                    return Err(failure);
                }
            }
        }
    }

    /// A look, when one is due (`last`: the roll's end, always one): the failure to report
    /// when the new generation is worse. Whether it hangs is checked at every look.
    fn look(&mut self, ctx: &Context, last: bool) -> Option<SpawnFailure> {
        if let Some(hung) = self.hang(ctx) {
            return Some(hung);
        }
        let c = self.now(ctx);
        if !(self.looks.due(c.new) || last) {
            return None;
        }
        self.judge(ctx, &c)
    }

    /// At a look: worse by its answers, or slower beyond `latency_tolerance`.
    fn judge(&self, ctx: &Context, c: &Comparison) -> Option<SpawnFailure> {
        if c.worse() {
            ctx.metrics.canary(Verdict::Worse);
            return Some(self.worse(c));
        }
        let l = self.latencies(ctx);
        if !l.worse() {
            return None;
        }
        ctx.metrics.canary(Verdict::Worse);
        Some(SpawnFailure {
            worker: None,
            reason: format!(
                "{} in the same {:.1}s: slower beyond canary.latency_tolerance ({}x; canary judge)",
                l.describe(
                    &format!("generation {}", self.generation),
                    &format!("generation {}", self.old)
                ),
                self.began.elapsed().as_secs_f64(),
                l.tolerance
            ),
            output: Vec::new(),
        })
    }

    /// Both generations' answer times since the window opened.
    fn latencies(&self, ctx: &Context) -> crate::canary::LatencyComparison {
        let old = ctx
            .pool
            .latencies_before(self.generation)
            .since(&self.old_latencies);
        crate::canary::LatencyComparison::of(
            &ctx.pool.latencies(self.generation),
            &old,
            ctx.config().canary.latency_tolerance,
        )
    }

    /// The failure to report when the new generation's pages hang (see [`crate::canary::hangs`]).
    fn hang(&self, ctx: &Context) -> Option<SpawnFailure> {
        let bound = hang_bound(ctx, &ctx.pool.latencies_before(self.generation));
        let new = ctx.pool.oldest_request(|g| g == self.generation);
        let old = ctx.pool.oldest_request(|g| g < self.generation);
        if !crate::canary::hangs(new, old, bound) {
            return None;
        }
        ctx.metrics.canary(Verdict::Worse);
        Some(SpawnFailure {
            worker: None,
            reason: format!(
                "generation {} left a request unanswered for {:.1}s (its pages hang), generation {} none for {:.1}s: worse (canary judge)",
                self.generation,
                new.unwrap_or_default().as_secs_f64(),
                self.old,
                (bound / 2).as_secs_f64()
            ),
            output: Vec::new(),
        })
    }

    fn worse(&self, c: &Comparison) -> SpawnFailure {
        SpawnFailure {
            worker: None,
            reason: format!(
                "generation {} {} in the same {:.1}s: worse beyond chance (canary judge)",
                self.generation,
                c.against(&format!("generation {}", self.old)),
                self.began.elapsed().as_secs_f64()
            ),
            output: Vec::new(),
        }
    }

    /// The canary phase: judged whenever a look is due while `duration` runs, then once more.
    async fn canary(
        &mut self,
        ctx: &Arc<Context>,
        config: &CanaryConfig,
        cancel: &CancellationToken,
        deaths: &mut Deaths,
        failures: &[SpawnFailure],
    ) -> Phase {
        let app = ctx.config().name.to_string();
        tracing::info!(
            app = %app, generation = self.generation.0,
            "canary: {} worker{} of generation {} judged for {} against the old generation",
            self.workers, if self.workers == 1 { "" } else { "s" }, self.generation,
            humantime::format_duration(config.duration.get())
        );
        let end = self.serving.unwrap_or(self.began) + config.duration.get();
        let mut tick = tokio::time::interval(LOOK_TICK);
        let mut shown = None::<Instant>;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Phase::Cancelled,
                _ = tick.tick() => {}
            }
            if let Some(death) = next_death(deaths, failures) {
                return Phase::Died(death);
            }
            let now = Instant::now();
            if let Some(hung) = self.hang(ctx) {
                return Phase::Rejected(hung);
            }
            let c = self.now(ctx);
            if self.looks.due(c.new)
                && let Some(failure) = self.judge(ctx, &c)
            {
                return rejected(failure, &c, deaths, failures).await;
            }
            if now < end && shown.is_some_and(|t| now.duration_since(t) < CANARY_TICK) {
                continue;
            }
            shown = Some(now);
            progress(
                ctx,
                self.generation,
                WaitingOn::Canary(CanaryProgress {
                    generation: self.generation,
                    workers: self.workers,
                    new: c.new,
                    old: c.old,
                    left: end.saturating_duration_since(now),
                }),
            );
            if now < end {
                continue;
            }
            let verdict = c.verdict(config.min_requests);
            if let Some(failure) = self.judge(ctx, &c) {
                return rejected(failure, &c, deaths, failures).await;
            }
            ctx.metrics.canary(verdict);
            tracing::info!(
                app = %app, generation = self.generation.0,
                "canary of generation {}: {}: it failed {}, generation {} {}",
                self.generation, verdict.as_str(), Share(c.new), self.old, Share(c.old)
            );
            return match (verdict, config.on_inconclusive) {
                (Verdict::Worse, _) => Phase::Rejected(self.worse(&c)),
                (Verdict::Inconclusive, OnInconclusive::Resist) => Phase::Rejected(SpawnFailure {
                    worker: None,
                    reason: format!(
                        "the canary of generation {} served {} request{} in {}, fewer than canary.min_requests ({}): inconclusive, and canary.on_inconclusive is \"resist\"",
                        self.generation,
                        c.new.requests,
                        if c.new.requests == 1 { "" } else { "s" },
                        humantime::format_duration(config.duration.get()),
                        config.min_requests
                    ),
                    output: Vec::new(),
                }),
                _ => Phase::Passed,
            };
        }
    }
}

/// A canary rejected by `failure`: when the new generation only dropped requests, a worker
/// that died a moment before its death was seen, if one is reported within [`DEATH_GRACE`].
async fn rejected(
    failure: SpawnFailure,
    c: &Comparison,
    deaths: &mut Deaths,
    failures: &[SpawnFailure],
) -> Phase {
    if !c.only_drops() {
        return Phase::Rejected(failure);
    }
    let death = tokio::time::timeout(DEATH_GRACE, async {
        loop {
            match deaths.recv().await {
                Some(d) if failures.iter().any(|f| f.worker == d.worker) => continue,
                other => return other,
            }
        }
    })
    .await;
    match death {
        Ok(Some(death)) => Phase::Died(death),
        _ => Phase::Rejected(failure),
    }
}

/// How long a verdict on dropped requests alone waits for the death of the worker that
/// dropped them: its connections break the moment it dies, while its exit is seen a little
/// later (over D-Bus, later still), and "worker 9 exited with status 1" is what the operator
/// needs to read. Dropped idempotent requests are sent again, so the wait costs visitors
/// little.
const DEATH_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);

/// How often a canary's figures are read (and shown): a look itself is due only as the
/// requests grow ([`Looks`]), so this sets how soon a due look comes, not how many.
const CANARY_TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// The hang bound (see [`crate::canary::hang_bound`]) of the app's config, against `old`,
/// the answer times of the generations before: their slowest (99.9th percentile).
pub(super) fn hang_bound(ctx: &Context, old: &crate::canary::Latencies) -> std::time::Duration {
    let timeout = ctx.config().workers.request_timeout.get();
    crate::canary::hang_bound((!timeout.is_zero()).then_some(timeout), old.quantile(0.999))
}

/// How often the judge looks at the counters while a canary is judged: a look is a sum of a
/// few counters, and a release that fails every request serves ~50 more of them per 100 ms
/// of looking late at a few hundred requests a second.
const LOOK_TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// The judge rejected the new generation: its workers get no new requests and are stopped
/// once their requests ended (at most `drain_timeout`); the old generation serves on. When the
/// roll had already replaced old workers, as many are started again from the old release
/// first, and when none is left the new ones serve until they are ready: the app never runs
/// out of workers.
async fn reject(
    ctx: &Arc<Context>,
    generation: Generation,
    target: usize,
    failure: SpawnFailure,
    cancel: &CancellationToken,
) -> RollResult {
    let workers = ctx.pool.workers();
    let ids: Vec<WorkerId> = workers
        .iter()
        .filter(|w| w.generation == generation && w.state.is_alive())
        .map(|w| w.id)
        .collect();
    let old_alive = workers
        .iter()
        .filter(|w| w.generation != generation && w.state.is_alive())
        .count();
    let old = ctx.state().generation;
    let refill = target.saturating_sub(old_alive);
    tracing::error!(
        app = %ctx.config().name, generation = generation.0,
        message_id = crate::journal::MSG_CANARY_FAILED,
        "rejecting generation {generation}: {}; stopping its {} worker{}{}",
        failure.reason, ids.len(), if ids.len() == 1 { "" } else { "s" },
        if refill > 0 { format!(", {refill} started again from generation {old} first") } else { String::new() }
    );
    // All at once, none of them gets another request while the first drains: as soon as an
    // old worker is there to take them.
    if old_alive > 0 {
        for id in &ids {
            ctx.pool.start_draining(*id);
        }
    }
    if refill > 0 {
        progress(
            ctx,
            generation,
            WaitingOn::Spawning {
                count: refill,
                generation: old,
            },
        );
        let results =
            futures_util::future::join_all((0..refill).map(|_| worker::spawn(ctx, old, cancel)))
                .await;
        for r in results {
            if let Err(BootError::Failed(f)) = r {
                tracing::error!(app = %ctx.config().name, "could not start generation {old} again: {f}");
            }
        }
        for id in &ids {
            ctx.pool.start_draining(*id);
        }
    }
    progress(ctx, generation, WaitingOn::StoppingAll(ids.len()));
    futures_util::future::join_all(ids.iter().map(|id| retire(ctx, *id))).await;
    RollResult::Rejected(failure)
}

/// Drain and stop a worker of a release that failed (rejected, or rolled back); one holding a
/// request past the hang bound (see
/// [`crate::canary::hang_bound`], against every generation's answers) would hold it until
/// drain_timeout: it is stopped at once, its requests cut, and those that may be sent again go
/// to the other workers, as a retry does (a rollback from a release whose pages hang).
async fn retire(ctx: &Arc<Context>, id: WorkerId) {
    let bound = hang_bound(ctx, &ctx.pool.latencies_before(Generation(u64::MAX)));
    let hung = ctx
        .pool
        .get(id)
        .and_then(|w| w.busy_for)
        .is_some_and(|b| b >= bound);
    if hung {
        tracing::warn!(
            app = %ctx.config().name, worker = id.0,
            "worker {id} has held a request for over {:.1}s (its pages hang): stopping it without waiting for drain_timeout",
            bound.as_secs_f64()
        );
        ctx.pool.mark_hung(id);
        worker::stop(ctx, id).await;
    } else {
        worker::drain_and_stop(ctx, id).await;
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
