//! The supervisor: spawns the pool, replaces dead workers, and runs rolling and blocking
//! restarts, resisting deployment errors (see ARCHITECTURE.md for the state machine).
//!
//! One task, [`Supervisor::run`], owns every decision about which workers exist. Commands
//! (restart, resume, shutdown) and events (a worker died, a replacement or a roll ended) reach it
//! through channels, so decisions are taken one at a time. The long jobs it starts (a roll, a
//! replacement) are tasks with a cancellation token; they report back with an event.

mod roll;
#[cfg(test)]
mod tests;
mod worker;

pub use crate::state::{
    Escalation, Phase, Resistance, RestartMode, RestartState, RollProgress, WaitingOn,
    WatchProgress,
};

use crate::canary::{Comparison, Share, Tally};
use crate::config::Config;
use crate::journal;
use crate::metrics::{RestartOutcome, RollbackTrigger};
use crate::notify::Notifier;
use crate::pool::{Pool, WorkerState};
use crate::spawn::{Generation, Spawner, WorkerId};
use roll::RollResult;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a restart ended, as `baton restart --wait` reports it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub generation: u64,
    pub message: String,
    /// The failed worker's last output lines, when a worker failed.
    #[serde(default)]
    pub output: Vec<String>,
}

/// A request to the supervisor.
pub enum Command {
    Restart {
        mode: Option<RestartMode>,
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Leave resistance mode; answers whether it was in force.
    Resume(oneshot::Sender<bool>),
    /// SIGTERM: enter `Stopping` (cancel the roll and replacements, refuse restarts from now
    /// on); answers once the phase is published.
    Stop(oneshot::Sender<()>),
    /// Stop every worker; answers when they are gone and every supervisor task has ended.
    Shutdown(oneshot::Sender<()>),
    /// `baton rollback`: a rolling restart to the previous generation's release and config.
    Rollback {
        reply: Option<oneshot::Sender<Outcome>>,
    },
}

/// Why a restart was refused while baton stops.
pub const STOPPING_MESSAGE: &str = "baton is stopping: no restart starts now";

enum Event {
    WorkerDied {
        id: WorkerId,
        generation: Generation,
        reason: String,
        /// How long it had run.
        lived: Duration,
        /// How long it had been ready.
        ready_for: Option<Duration>,
        pid: Option<u32>,
        unit: Option<String>,
        /// Its last lines of output.
        output: Vec<String>,
    },
    ReplacementDone(Result<WorkerId, worker::BootError>),
    RecycleDone(Result<WorkerId, worker::BootError>),
    RollDone(RollResult),
}

/// Why a reload (of the config, before a restart) changed nothing.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("the config is invalid, nothing was changed: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "a certificate cannot be used, nothing was changed (the certificates in force keep serving): {0}"
    )]
    Tls(#[from] crate::tls::TlsError),
}

/// What every supervisor task shares.
pub struct Context {
    /// The HTTPS certificates, re-read by every reload (when baton serves HTTPS).
    pub tls: std::sync::OnceLock<Arc<crate::tls::Certificates>>,
    /// `[static]`: each generation's directory is pinned with its release.
    pub assets: std::sync::OnceLock<Arc<crate::assets::Assets>>,
    /// The config in force: replaced (whole) by a restart that re-read the file.
    config: Mutex<Arc<Config>>,
    /// Where the config came from (`None`: built in, e.g. `baton demo`).
    config_path: Option<PathBuf>,
    pub pool: Arc<Pool>,
    pub spawner: Arc<dyn Spawner>,
    probe: Arc<dyn crate::readiness::Probe>,
    pub notifier: Arc<Notifier>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The published state: only the supervisor and its roll write it.
    state: watch::Sender<RestartState>,
    next_worker: AtomicU64,
    /// What each generation was started from: its release directory, resolved once, and the
    /// config in force then (a rollback brings both back).
    pinned: Mutex<BTreeMap<Generation, Pinned>>,
    events: mpsc::UnboundedSender<Event>,
    /// Cancelled when baton starts stopping (SIGTERM): rolls, replacements, drains and the
    /// waits of recycling end on it; every other token of the supervisor is its child.
    stopping: CancellationToken,
    /// Cancelled once the workers are stopped (or left to systemd): the exit watchers and the
    /// usage sampler end on it.
    closed: CancellationToken,
    /// Every task the supervisor starts, so that shutdown can wait for all of them.
    tasks: TaskTracker,
}

impl Context {
    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The published state now.
    pub fn state(&self) -> RestartState {
        self.state.borrow().clone()
    }

    /// Every change of the published state from now on (a `watch`: a slow reader sees the
    /// latest, not every step).
    pub fn subscribe(&self) -> watch::Receiver<RestartState> {
        self.state.subscribe()
    }

    /// Report how a worker's stop escalates, when the roll in progress waits on it.
    fn note_stop(&self, worker: WorkerId, escalation: Escalation) {
        self.update(|s| {
            if let Some(r) = s.rolling_mut()
                && matches!(&r.waiting_on,
                    WaitingOn::Draining(w) | WaitingOn::Stopping { worker: w, .. } if *w == worker)
            {
                r.waiting_on = WaitingOn::Stopping { worker, escalation };
            }
        });
    }

    /// Change the published state; subscribers and `STATUS=` hear of it.
    fn update(&self, f: impl FnOnce(&mut RestartState)) {
        self.state.send_modify(f);
        self.publish();
    }

    /// Move to another phase, if the state machine allows it (a refused move is a bug: logged,
    /// and the phase stays).
    fn enter(&self, to: Phase) {
        self.update(|s| {
            if let Err(e) = s.enter(to) {
                tracing::error!("{e}");
            }
        });
    }

    /// Tell systemd the one-line state.
    pub fn publish(&self) {
        let workers = self.pool.workers();
        self.refresh_assets(&workers);
        let line =
            crate::status::status_line(&self.state.borrow(), &workers, self.desired(&workers));
        self.notifier.status(&line);
    }

    /// The generations whose static files are served: those with a worker that serves.
    fn refresh_assets(&self, workers: &[crate::pool::WorkerView]) {
        if let Some(assets) = self.assets.get() {
            let serving: Vec<u64> = workers
                .iter()
                .filter(|w| {
                    matches!(
                        w.state,
                        crate::pool::WorkerState::Ready | crate::pool::WorkerState::Draining
                    )
                })
                .map(|w| w.generation.0)
                .collect();
            assets.serving(&serving);
        }
    }

    /// Workers the pool should have now: at least `min`, as many as are alive when on-demand
    /// spawning went beyond it, at most `max`.
    pub fn desired(&self, workers: &[crate::pool::WorkerView]) -> usize {
        let alive = workers.iter().filter(|w| w.state.is_alive()).count();
        let w = &self.config().workers;
        alive.clamp(w.min(), w.max().max(w.min()))
    }

    fn next_worker_id(&self) -> WorkerId {
        WorkerId(self.next_worker.fetch_add(1, Ordering::Relaxed))
    }

    /// Resolve the release directory once for a new generation and pin it, with the config in
    /// force.
    fn pin_generation(&self, generation: Generation) -> Result<(), PinError> {
        let config = self.config();
        let directory = match &config.app.directory {
            None => None,
            Some(d) => Some(std::fs::canonicalize(d).map_err(|source| PinError {
                directory: d.clone(),
                source,
            })?),
        };
        self.pin_to(generation, Pinned { directory, config });
        Ok(())
    }

    fn pin_to(&self, generation: Generation, pinned: Pinned) {
        if let (Some(assets), Some(dir)) = (self.assets.get(), &pinned.directory)
            && let Err(e) = assets.pin(generation.0, dir)
        {
            tracing::warn!(app = %self.config().name, generation = generation.0,
                "no static files for generation {generation}: cannot open [static] directory in {}: {e}", dir.display());
        }
        self.pins().insert(generation, pinned);
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, BTreeMap<Generation, Pinned>> {
        self.pinned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pinned(&self, generation: Generation) -> Option<Pinned> {
        self.pins().get(&generation).cloned()
    }

    fn directory(&self, generation: Generation) -> Option<PathBuf> {
        self.pins()
            .get(&generation)
            .and_then(|p| p.directory.clone())
    }

    /// The config a generation's workers run with: the one in force when it was pinned (so
    /// that a worker of the old release, replaced while baton resists the new one, starts
    /// the way the old release always did), else the one in force now.
    fn config_of(&self, generation: Generation) -> Arc<Config> {
        self.pins()
            .get(&generation)
            .map(|p| p.config.clone())
            .unwrap_or_else(|| self.config())
    }
}

/// What a generation was started from.
#[derive(Clone)]
struct Pinned {
    directory: Option<PathBuf>,
    config: Arc<Config>,
}

/// A release directory that could not be resolved for a new generation.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve app.directory {}: {source}", directory.display())]
pub struct PinError {
    pub directory: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A handle to send commands to a running supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    pub context: Arc<Context>,
}

impl Handle {
    pub async fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// SIGTERM: the supervisor enters `Stopping` before anything else happens (health answers
    /// 503 from the moment this returns).
    pub async fn begin_stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Stop(tx)).await {
            let _ = rx.await;
        }
    }

    /// Stop every worker and wait for every supervisor task.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Shutdown(tx)).await {
            let _ = rx.await;
        }
    }
}

/// A worker that dies within this time of its start is treated as a crash loop.
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(10);

/// Retry delays for spawns outside a roll: no storm when a proven release fails for a while.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn delay(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => Duration::from_millis(500u64 << (n - 1).min(7)).min(Duration::from_secs(60)),
        }
    }
}

struct ActiveRoll {
    cancel: CancellationToken,
    /// New-generation workers that died while ready, for the roll to judge.
    deaths: mpsc::UnboundedSender<worker::SpawnFailure>,
    /// Workers of the new generation the roll ends with.
    total: usize,
    generation: Generation,
    mode: RestartMode,
    waiters: Vec<oneshot::Sender<Outcome>>,
    started: Instant,
    /// What the config reload at its start said (what changed, what waits for a restart of
    /// baton itself).
    notes: Vec<String>,
    /// Set when this roll is a rollback.
    rollback: Option<Rollback>,
    /// The older generations' figures when the roll began: what they serve during the roll is
    /// the baseline of the watch that follows it.
    old_base: Tally,
}

/// A roll back to an earlier generation's release.
struct Rollback {
    trigger: RollbackTrigger,
    /// Why (for the judge and deaths: the figures or the death).
    reason: String,
    /// The generation rolled back from, and the one whose release comes back.
    from: Generation,
    to: Generation,
}

/// A generation still judged after its roll ended (`canary.watch`).
struct Watch {
    generation: Generation,
    until: Instant,
    until_wall: SystemTime,
    /// Its figures when the roll ended.
    base: Tally,
    /// The older generations' figures during the roll.
    baseline: Tally,
    looks: crate::canary::Looks,
}

/// What a reload does with a change to one part of the config.
enum Reload {
    /// Put in force by the reload.
    Applied,
    /// Only a new baton can take it (its sockets, its backend, its name): the old value is
    /// put back into the new config, and the operator is told.
    Kept(fn(&mut Config, &Config)),
}

/// One part of the config, as a reload's notes name it.
struct Section {
    name: &'static str,
    differs: fn(&Config, &Config) -> bool,
    reload: Reload,
}

/// What differs from `old` in `new`, by [`SECTIONS`]: the parts a reload applies, and those
/// only a new baton takes, whose old values are put back into `new`. `tls_running`: baton
/// serves HTTPS already.
fn sort_changes(
    old: &Config,
    new: &mut Config,
    tls_running: bool,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let (mut applied, mut kept) = (Vec::new(), Vec::new());
    for section in SECTIONS {
        let differs = (section.differs)(old, new);
        match section.reload {
            Reload::Applied if differs => applied.push(section.name),
            Reload::Applied => {}
            Reload::Kept(keep) => {
                // A first certificate would need the HTTPS listener, which only a new baton
                // opens.
                let tls_begins = section.name == TLS_FIXED && !tls_running && new.tls.enabled();
                if differs || tls_begins {
                    kept.push(section.name);
                }
                keep(new, old);
            }
        }
    }
    (applied, kept)
}

/// The keys of `[tls]` that only a new baton can take; the rest of `[tls]` (the certificates)
/// is applied.
const TLS_FIXED: &str = "[tls] address, redirect_http, hsts, acme";

/// Every part of the config, once, and what a reload does with it: the one list both what a
/// reload applies and what it keeps are read from (a part in neither was silently dropped by a
/// reload, as `[canary]` was). The kept ones come first: `[tls]` applied is what is left of
/// `[tls]` once its fixed keys are kept. A new field of `Config` fails to build the reload's
/// test until it has its place here.
const SECTIONS: &[Section] = &[
    Section {
        name: "name",
        differs: |o, n| o.name != n.name,
        reload: Reload::Kept(|n, o| n.name = o.name.clone()),
    },
    Section {
        name: "[listen]",
        differs: |o, n| o.listen != n.listen,
        reload: Reload::Kept(|n, o| n.listen = o.listen.clone()),
    },
    Section {
        name: "[control]",
        differs: |o, n| o.control != n.control,
        reload: Reload::Kept(|n, o| n.control = o.control.clone()),
    },
    Section {
        name: "[spawner]",
        differs: |o, n| o.spawner != n.spawner,
        reload: Reload::Kept(|n, o| n.spawner = o.spawner.clone()),
    },
    Section {
        name: "[metrics]",
        differs: |o, n| o.metrics != n.metrics,
        reload: Reload::Kept(|n, o| n.metrics = o.metrics.clone()),
    },
    Section {
        name: "[static]",
        differs: |o, n| o.static_files != n.static_files,
        reload: Reload::Kept(|n, o| n.static_files = o.static_files.clone()),
    },
    Section {
        name: "[log]",
        differs: |o, n| o.log != n.log,
        reload: Reload::Kept(|n, o| n.log = o.log.clone()),
    },
    Section {
        name: TLS_FIXED,
        differs: |o, n| {
            o.tls.address != n.tls.address
                || o.tls.redirect_http != n.tls.redirect_http
                || o.tls.hsts != n.tls.hsts
                || o.tls.acme != n.tls.acme
        },
        reload: Reload::Kept(|n, o| {
            n.tls.address = o.tls.address;
            n.tls.redirect_http = o.tls.redirect_http;
            n.tls.hsts = o.tls.hsts;
            n.tls.acme = o.tls.acme.clone();
        }),
    },
    Section {
        name: "[app]",
        differs: |o, n| o.app != n.app,
        reload: Reload::Applied,
    },
    Section {
        name: "[workers]",
        differs: |o, n| o.workers != n.workers,
        reload: Reload::Applied,
    },
    Section {
        name: "[readiness]",
        differs: |o, n| o.readiness != n.readiness,
        reload: Reload::Applied,
    },
    Section {
        name: "[restart]",
        differs: |o, n| o.restart != n.restart,
        reload: Reload::Applied,
    },
    Section {
        name: "[canary]",
        differs: |o, n| o.canary != n.canary,
        reload: Reload::Applied,
    },
    Section {
        name: "[tls]",
        differs: |o, n| o.tls != n.tls,
        reload: Reload::Applied,
    },
];

pub struct Supervisor {
    ctx: Arc<Context>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    roll: Option<ActiveRoll>,
    /// A restart asked for while a roll was being cancelled.
    next_restart: Option<(Option<RestartMode>, Vec<oneshot::Sender<Outcome>>)>,
    replacements: CancellationToken,
    pending_replacements: usize,
    /// The worker being recycled, if any (one at a time).
    recycling: Option<WorkerId>,
    /// Failed recycles, and when the next one may be tried: a replacement that cannot start is
    /// retried with the same backoff as any spawn, not at every tick.
    recycle_backoff: Backoff,
    recycle_not_before: Option<Instant>,
    backoff: Backoff,
    highest_generation: Generation,
    /// SIGTERM was heard (the published phase is `Stopping`).
    stopping: bool,
    /// The generation last rolled out, while it is watched.
    watch: Option<Watch>,
    /// The generations that became the current one (the first, then each successful roll),
    /// oldest first: a rollback goes to the one before the last.
    history: Vec<Generation>,
}

impl Supervisor {
    pub fn new(
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        pool: Arc<Pool>,
        spawner: Arc<dyn Spawner>,
        probe: Arc<dyn crate::readiness::Probe>,
        notifier: Arc<Notifier>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Supervisor, Handle) {
        let (tx, commands) = mpsc::channel(16);
        let (etx, events) = mpsc::unbounded_channel();
        let ctx = Arc::new(Context {
            config: Mutex::new(config),
            config_path,
            pool,
            spawner,
            probe,
            notifier,
            metrics,
            state: watch::channel(RestartState {
                config_generation: 1,
                ..RestartState::default()
            })
            .0,
            next_worker: AtomicU64::new(1),
            tls: std::sync::OnceLock::new(),
            assets: std::sync::OnceLock::new(),
            pinned: Mutex::new(BTreeMap::new()),
            events: etx,
            stopping: CancellationToken::new(),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let sup = Supervisor {
            ctx: ctx.clone(),
            commands,
            events,
            roll: None,
            next_restart: None,
            replacements: ctx.stopping.child_token(),
            pending_replacements: 0,
            recycling: None,
            recycle_backoff: Backoff::default(),
            recycle_not_before: None,
            backoff: Backoff::default(),
            highest_generation: Generation(0),
            stopping: false,
            watch: None,
            history: Vec::new(),
        };
        (sup, Handle { tx, context: ctx })
    }

    /// Pin each generation's static directory with its release.
    pub fn serve_assets(&self, assets: Arc<crate::assets::Assets>) {
        let _ = self.ctx.assets.set(assets);
    }

    /// Re-read these HTTPS certificates at every reload.
    pub fn serve_tls(&self, certs: Arc<crate::tls::Certificates>) {
        let _ = self.ctx.tls.set(certs);
    }

    /// Start generation 1 and supervise until shutdown.
    pub async fn run(mut self) {
        let first = Generation(1);
        self.highest_generation = first;
        if let Err(e) = self.ctx.pin_generation(first) {
            // Retried by every replacement attempt below, with backoff, until it resolves.
            tracing::error!(app = %self.ctx.config().name, "{e}");
        }
        self.ctx.update(|s| s.generation = first);
        self.history = vec![first];
        let sampler = self.ctx.clone();
        self.ctx.tasks.spawn(async move {
            tokio::select! {
                _ = sample_usage(sampler.clone()) => {}
                _ = sampler.closed.cancelled() => {}
            }
        });
        self.adopt().await;
        self.reconcile();
        self.check_started();
        self.ctx.publish();
        let pool = self.ctx.pool.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(cmd) = self.commands.recv() => {
                    if let Some(done) = self.command(cmd) {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                }
                Some(ev) = self.events.recv() => self.event(ev),
                // A request started waiting: maybe spawn on demand (reconcile below).
                _ = pool.demand() => {}
                _ = tick.tick() => {
                    // keep_old ends by the clock, not by an event.
                    self.ctx.refresh_assets(&self.ctx.pool.workers());
                    self.check_watch();
                    self.lifecycle();
                }
                else => return,
            }
            self.reconcile();
            self.check_started();
            self.ctx.publish();
        }
    }

    fn command(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Restart { mode, reply } => {
                let waiters: Vec<_> = reply.into_iter().collect();
                if self.stopping {
                    tracing::warn!(app = %self.ctx.config().name, "restart refused: {STOPPING_MESSAGE}");
                    let generation = self.ctx.state().generation.0;
                    for w in waiters {
                        let _ = w.send(Outcome {
                            ok: false,
                            generation,
                            message: STOPPING_MESSAGE.into(),
                            output: Vec::new(),
                        });
                    }
                    return None;
                }
                if let Some(roll) = &self.roll {
                    tracing::info!(
                        app = %self.ctx.config().name,
                        generation = roll.generation.0,
                        "a new restart supersedes the one in progress"
                    );
                    roll.cancel.cancel();
                    let (_, pending) = self.next_restart.get_or_insert((mode, Vec::new()));
                    pending.extend(waiters);
                    if let Some(entry) = self.next_restart.as_mut() {
                        entry.0 = mode;
                    }
                } else {
                    self.start_restart(mode, waiters);
                }
            }
            Command::Resume(reply) => {
                let was = self.leave_resistance("baton resume");
                let _ = reply.send(was);
            }
            Command::Stop(ack) => {
                self.begin_stop();
                let _ = ack.send(());
            }
            Command::Shutdown(done) => return Some(done),
            Command::Rollback { reply } => {
                let waiters: Vec<_> = reply.into_iter().collect();
                self.start_rollback(RollbackTrigger::Operator, "baton rollback".into(), waiters);
            }
        }
        None
    }

    /// SIGTERM: from here on no restart starts; the roll in progress, pending replacements and
    /// drains end (their workers keep serving until the shutdown stops them).
    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        tracing::info!(app = %self.ctx.config().name, "stopping: no restart starts from now on");
        self.ctx.notifier.stopping();
        self.ctx.stopping.cancel();
        self.ctx.enter(Phase::Stopping);
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one match over the supervisor's events: each arm decides on the supervisor's \
                  state, and side by side they show what every death and every spawn leads to"
    )]
    fn event(&mut self, ev: Event) {
        match ev {
            Event::WorkerDied {
                id,
                generation,
                reason,
                lived,
                ready_for,
                pid,
                unit,
                output,
            } => {
                // A new worker of the roll in progress is the roll's to judge: whenever it
                // dies before the roll ends, the release is not good (a death within
                // readiness.settle, or later: a release that dies a few seconds after it
                // starts must not roll on, spawning worker after worker of it).
                if let Some(roll) = self.roll.as_ref().filter(|r| r.generation == generation) {
                    tracing::warn!(
                        app = %self.ctx.config().name, worker = id.0, generation = generation.0,
                        pid, unit = unit.as_deref(),
                        "worker {id} of the new generation {reason} {:.1}s after it started",
                        lived.as_secs_f64()
                    );
                    let after = match ready_for {
                        Some(r) => format!("{:.1}s after it became ready", r.as_secs_f64()),
                        None => format!("{:.1}s after it started", lived.as_secs_f64()),
                    };
                    let _ = roll.deaths.send(worker::SpawnFailure {
                        worker: Some(id),
                        reason: format!("{reason} {after}, before the restart ended"),
                        output,
                    });
                    return;
                }
                // A worker of the generation just rolled out, during its watch: the release
                // dies a while after it starts, later than its roll took. Rolled back at once,
                // so that the app never runs out of workers while its processes die away.
                if self.roll.is_none()
                    && self
                        .watch
                        .as_ref()
                        .is_some_and(|w| w.generation == generation)
                {
                    let reason = format!(
                        "worker {id} of generation {generation} {reason} {:.1}s after it started, {} after its roll ended (canary.watch)",
                        lived.as_secs_f64(),
                        self.watch.as_ref().map_or(String::new(), |w| {
                            let watch = self.ctx.config().canary.watch.get();
                            let left = w.until.saturating_duration_since(Instant::now());
                            format!("{}s", watch.saturating_sub(left).as_secs())
                        })
                    );
                    tracing::error!(
                        app = %self.ctx.config().name, worker = id.0, generation = generation.0,
                        pid, unit = unit.as_deref(), "{reason}"
                    );
                    for line in &output {
                        tracing::error!(app = %self.ctx.config().name, worker = id.0, "worker {id}: {line}");
                    }
                    self.start_rollback(RollbackTrigger::Death, reason, Vec::new());
                    return;
                }
                // A worker of a release that failed its roll, while the old one serves: it is
                // replaced from the old release at once; its death says nothing of the old
                // release, so it adds no backoff.
                let state = self.ctx.state();
                if state.phase.resisting().is_some() && generation > state.generation {
                    tracing::warn!(
                        app = %self.ctx.config().name, worker = id.0, generation = generation.0,
                        pid, unit = unit.as_deref(),
                        "worker {id} of the failed generation {generation} {reason} {:.1}s after it started; replacing it from generation {}",
                        lived.as_secs_f64(), state.generation
                    );
                    return;
                }
                // A worker that dies soon after it became ready counts as a failed spawn, so a
                // release that crashes again and again is respawned with backoff, not in a storm.
                if lived < CRASH_LOOP_WINDOW {
                    self.backoff.failures += 1;
                    let message = format!(
                        "worker {id} {reason} {:.1}s after it started",
                        lived.as_secs_f64()
                    );
                    tracing::error!(
                        app = %self.ctx.config().name, worker = id.0, generation = generation.0,
                        pid, unit = unit.as_deref(), message_id = journal::MSG_SPAWN_FAILED,
                        "{message}; replacing it in {}", humantime::format_duration(self.backoff.delay())
                    );
                    self.ctx
                        .update(|s| s.last_spawn_failure = Some((SystemTime::now(), message)));
                } else {
                    self.backoff.failures = 0;
                    tracing::warn!(
                        app = %self.ctx.config().name, worker = id.0, generation = generation.0,
                        pid, unit = unit.as_deref(),
                        "worker {id} {reason}; replacing it"
                    );
                }
            }
            Event::ReplacementDone(result) => {
                self.pending_replacements = self.pending_replacements.saturating_sub(1);
                match result {
                    // Backoff is reset only once a worker has lived past CRASH_LOOP_WINDOW.
                    Ok(_) => {}
                    Err(worker::BootError::Cancelled) => {}
                    Err(worker::BootError::Failed(f)) => {
                        self.backoff.failures += 1;
                        let delay = self.backoff.delay();
                        // The failure itself was logged with its MESSAGE_ID where it happened;
                        // this says what comes next, so one failure is one catalogued entry.
                        tracing::error!(
                            app = %self.ctx.config().name, worker = f.worker.map(|w| w.0),
                            "spawn failed: {f}; retrying in {}", humantime::format_duration(delay)
                        );
                        self.ctx.update(|s| {
                            s.last_spawn_failure = Some((SystemTime::now(), f.to_string()))
                        });
                    }
                }
            }
            Event::RecycleDone(result) => {
                self.recycling = None;
                match result {
                    Ok(_) => {
                        self.recycle_backoff.failures = 0;
                        self.recycle_not_before = None;
                    }
                    Err(worker::BootError::Cancelled) => {}
                    Err(worker::BootError::Failed(f)) => {
                        self.recycle_backoff.failures += 1;
                        let delay = self.recycle_backoff.delay();
                        self.recycle_not_before = Some(Instant::now() + delay);
                        tracing::error!(
                            app = %self.ctx.config().name, worker = f.worker.map(|w| w.0),
                            "could not recycle: {f}; the old worker keeps serving, next try in {}",
                            humantime::format_duration(delay)
                        );
                    }
                }
            }
            Event::RollDone(result) => self.finish_roll(result),
        }
    }

    /// Re-read the config file before a restart. `Ok(notes)` once the new config is in force
    /// (notes: what changed, and what needs a restart of baton itself, whose old value stays);
    /// `Err(message)` when the file is broken: then nothing changed.
    fn reload_config(&mut self) -> Result<Vec<String>, ReloadError> {
        let Some(path) = self.ctx.config_path.clone() else {
            return Ok(Vec::new());
        };
        let mut new = Config::load(&path)?;
        let old = self.ctx.config();
        // The certificates first, and every time: certbot renews the files in place. Nothing
        // else changes when one cannot be used.
        let certificates = match self.ctx.tls.get() {
            Some(certs) => {
                // ACME's part belongs to the running manager (below).
                let mut tls = new.tls.clone();
                tls.acme = old.tls.acme.clone();
                Some(certs.reload(&tls)?)
            }
            None => None,
        };
        let (changed, fixed) = sort_changes(&old, &mut new, self.ctx.tls.get().is_some());
        let mut notes = Vec::new();
        let app = old.name.clone();
        if let Some(loaded) = certificates {
            let list: Vec<String> = loaded.iter().map(ToString::to_string).collect();
            let note = format!("certificates in force: {}", list.join("; "));
            tracing::info!(app = %app, message_id = journal::MSG_CERTIFICATES, "{note}");
            notes.push(note);
        }
        if !changed.is_empty() {
            notes.push(format!(
                "{} applied from {}",
                changed.join(", "),
                path.display()
            ));
            self.ctx
                .pool
                .set_limits(crate::pool::Limits::from_config(&new.workers));
            *self.ctx.config.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
            self.ctx.update(|s| s.config_generation += 1);
            tracing::info!(app = %app, "config reloaded: {}", notes.join("; "));
        }
        if !fixed.is_empty() {
            let note = format!(
                "{} changed, which takes a restart of baton itself (systemctl restart): the old values stay in force",
                fixed.join(", ")
            );
            tracing::warn!(app = %app, "{note}");
            notes.push(note);
        }
        Ok(notes)
    }

    fn start_restart(&mut self, mode: Option<RestartMode>, waiters: Vec<oneshot::Sender<Outcome>>) {
        // The config first: a broken file fails the restart and changes nothing.
        let notes = match self.reload_config() {
            Ok(notes) => notes,
            Err(e) => {
                let message = e.to_string();
                let generation = self.ctx.state().generation.0;
                tracing::error!(
                    app = %self.ctx.config().name, generation, message_id = journal::MSG_ROLL_FINISHED,
                    "restart refused: {message}"
                );
                self.ctx.metrics.restart(RestartOutcome::Failed);
                for w in waiters {
                    let _ = w.send(Outcome {
                        ok: false,
                        generation,
                        message: message.clone(),
                        output: Vec::new(),
                    });
                }
                return;
            }
        };
        let mode = mode.unwrap_or(if self.ctx.config().restart.rolling {
            RestartMode::Rolling
        } else {
            RestartMode::Blocking
        });
        self.launch_roll(mode, waiters, notes, None);
    }

    /// Start the roll task to the next generation (the restart's checks are done).
    fn launch_roll(
        &mut self,
        mode: RestartMode,
        waiters: Vec<oneshot::Sender<Outcome>>,
        notes: Vec<String>,
        rollback: Option<(Rollback, Pinned)>,
    ) {
        self.leave_resistance(if rollback.is_some() {
            "a rollback"
        } else {
            "a new restart"
        });
        // A new roll ends the watch of the last one: the judge starts again with it.
        self.watch = None;
        self.ctx.update(|s| s.watch = None);
        // Replacements in flight would add workers of the old generation behind the roll's back.
        self.replacements.cancel();
        self.replacements = self.ctx.stopping.child_token();
        self.highest_generation = Generation(self.highest_generation.0 + 1);
        let generation = self.highest_generation;
        let total = self.ctx.desired(&self.ctx.pool.workers());
        let rollback = rollback.map(|(rb, pinned)| {
            // The release and the config the earlier generation ran with.
            let changed = !Arc::ptr_eq(&pinned.config, &self.ctx.config());
            self.ctx
                .pool
                .set_limits(crate::pool::Limits::from_config(&pinned.config.workers));
            *self.ctx.config.lock().unwrap_or_else(|e| e.into_inner()) = pinned.config.clone();
            if changed {
                self.ctx.update(|s| s.config_generation += 1);
            }
            self.ctx.pin_to(generation, pinned);
            rb
        });
        match &rollback {
            None => tracing::info!(
                app = %self.ctx.config().name, generation = generation.0,
                message_id = journal::MSG_ROLL_STARTED,
                "{} restart to generation {generation} started ({total} workers)", mode.as_str()
            ),
            Some(rb) => tracing::info!(
                app = %self.ctx.config().name, generation = generation.0,
                message_id = journal::MSG_ROLL_STARTED,
                "rollback to the release of generation {} started as generation {generation} ({total} workers)", rb.to
            ),
        }
        self.ctx.notifier.reloading();
        self.ctx.enter(Phase::Rolling(RollProgress {
            mode,
            generation,
            rollback_to: rollback.as_ref().map(|rb| rb.to),
            done: 0,
            total,
            waiting_on: WaitingOn::Starting,
        }));
        let cancel = self.ctx.stopping.child_token();
        let ctx = self.ctx.clone();
        let token = cancel.clone();
        let (deaths, mut died) = mpsc::unbounded_channel();
        // A rollback brings back a release that served: it needs no canary.
        let canary = rollback.is_none();
        self.ctx.tasks.spawn(async move {
            let result = roll::run(&ctx, generation, mode, total, &token, &mut died, canary).await;
            let _ = ctx.events.send(Event::RollDone(result));
        });
        self.roll = Some(ActiveRoll {
            deaths,
            cancel,
            total,
            generation,
            mode,
            waiters,
            started: Instant::now(),
            notes,
            rollback,
            old_base: self.ctx.pool.tally_before(generation),
        });
    }

    /// Roll back to the previous generation's release and config (`baton rollback`, or the
    /// watch of the generation just rolled out found it worse or saw it die). Refused, with
    /// the reason, when a roll runs, when there is no earlier generation, or when its release
    /// directory is gone.
    fn start_rollback(
        &mut self,
        trigger: RollbackTrigger,
        reason: String,
        waiters: Vec<oneshot::Sender<Outcome>>,
    ) {
        let current = self.ctx.state().generation;
        let (to, pinned) = match self.rollback_target(current) {
            Ok(found) => found,
            Err(message) => {
                tracing::warn!(app = %self.ctx.config().name, "rollback refused: {message}");
                for w in waiters {
                    let _ = w.send(Outcome {
                        ok: false,
                        generation: current.0,
                        message: message.clone(),
                        output: Vec::new(),
                    });
                }
                return;
            }
        };
        self.ctx.metrics.rollback(trigger);
        let dir = pinned
            .directory
            .as_ref()
            .map(|d| format!(" ({})", d.display()))
            .unwrap_or_default();
        match trigger {
            RollbackTrigger::Operator => tracing::warn!(
                app = %self.ctx.config().name, generation = current.0,
                message_id = journal::MSG_ROLLBACK,
                "rolling back from generation {current} to the release of generation {to}{dir}: {reason}"
            ),
            _ => tracing::error!(
                app = %self.ctx.config().name, generation = current.0,
                message_id = journal::MSG_ROLLBACK,
                "rolling back from generation {current} to the release of generation {to}{dir} by itself: {reason}"
            ),
        }
        let rollback = Rollback {
            trigger,
            reason,
            from: current,
            to,
        };
        self.launch_roll(
            RestartMode::Rolling,
            waiters,
            Vec::new(),
            Some((rollback, pinned)),
        );
    }

    /// The generation a rollback from `current` goes to, and what it was started from; or why
    /// there is none.
    fn rollback_target(&self, current: Generation) -> Result<(Generation, Pinned), String> {
        if self.stopping {
            return Err(STOPPING_MESSAGE.into());
        }
        if self.roll.is_some() {
            return Err(
                "a restart is in progress: roll back once it ended, or start a new restart".into(),
            );
        }
        let Some(to) = self.previous_generation(current) else {
            return Err(format!(
                "there is no earlier generation to roll back to: generation {current} is the first this baton ran"
            ));
        };
        let Some(pinned) = self.ctx.pinned(to) else {
            return Err(format!(
                "generation {to}'s release is not known (it was adopted from a previous baton)"
            ));
        };
        if let Some(dir) = &pinned.directory
            && !dir.is_dir()
        {
            return Err(format!(
                "the release directory of generation {to}, {}, no longer exists",
                dir.display()
            ));
        }
        Ok((to, pinned))
    }

    /// The generation before `current` among those that became current.
    fn previous_generation(&self, current: Generation) -> Option<Generation> {
        let at = self.history.iter().rposition(|g| *g == current)?;
        at.checked_sub(1).map(|i| self.history[i])
    }

    /// Judge the generation last rolled out against the old one's figures during the roll,
    /// while its watch lasts; worse rolls it back.
    fn check_watch(&mut self) {
        if self.stopping || self.roll.is_some() {
            return;
        }
        let Some(w) = self.watch.as_mut() else { return };
        let c = Comparison::of(self.ctx.pool.tally(w.generation).since(w.base), w.baseline);
        let app = self.ctx.config().name.to_string();
        let generation = w.generation;
        // Against the older generations' whole life: their workers are gone.
        let old_latencies = self.ctx.pool.latencies_before(generation);
        let bound = roll::hang_bound(&self.ctx, &old_latencies);
        // With nothing of the old generation to compare with, one request is not enough (a
        // rare slow export): two of its workers, or all when it has one.
        let (stuck, of) = self.ctx.pool.hung_workers(|g| g == generation, bound);
        let hung = (stuck > 0 && stuck >= of.min(2))
            .then(|| self.ctx.pool.oldest_request(|g| g == generation))
            .flatten();
        // Latency is not judged here: the old generation no longer serves beside it, and
        // answer times follow the day's load far more than error rates do (a busier hour
        // after the roll would roll back an equal release).
        let due = w.looks.due(c.new);
        let reason = if let Some(oldest) = hung {
            Some(format!(
                "since its roll ended, generation {generation} left a request unanswered for {:.1}s (its pages hang; canary judge, canary.watch)",
                oldest.as_secs_f64()
            ))
        } else if due && c.worse() {
            Some(format!(
                "since its roll ended, generation {generation} {}: worse beyond chance (canary judge, canary.watch)",
                c.against("the generation before it during the roll")
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            self.ctx.metrics.canary(crate::canary::Verdict::Worse);
            self.watch = None;
            self.ctx.update(|s| s.watch = None);
            self.start_rollback(RollbackTrigger::Judge, reason, Vec::new());
            return;
        }
        if Instant::now() >= w.until {
            tracing::info!(
                app = %app, generation = w.generation.0,
                "generation {} passed its watch: it failed {}, the generation before it {} during the roll",
                w.generation, Share(c.new), Share(c.old)
            );
            self.watch = None;
            self.ctx.update(|s| s.watch = None);
            return;
        }
        let progress = WatchProgress {
            generation: w.generation,
            until: w.until_wall,
            new: c.new,
            old: c.old,
        };
        if self.ctx.state().watch.as_ref() != Some(&progress) {
            self.ctx.update(|s| s.watch = Some(progress));
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one match over how a roll ended: side by side, the arms show every outcome a \
                  waiter can be told and the phase each leaves"
    )]
    fn finish_roll(&mut self, result: RollResult) {
        let Some(roll) = self.roll.take() else { return };
        let app = &self.ctx.config().name;
        let generation = roll.generation;
        let took = roll.started.elapsed();
        // A release the canary judge rejected is a deployment error like one that cannot
        // start: resisted when resistance is on.
        let result = match result {
            RollResult::Rejected(f) if self.ctx.config().restart.resist_deployment_errors => {
                RollResult::Resisting(f)
            }
            other => other,
        };
        let outcome = match result {
            RollResult::Cancelled => {
                let (mode, mut waiters) = self.next_restart.take().unwrap_or((None, Vec::new()));
                waiters.extend(roll.waiters);
                if self.stopping {
                    self.ctx.metrics.restart(RestartOutcome::Cancelled);
                    let message = format!(
                        "{STOPPING_MESSAGE}; the restart to generation {generation} was cancelled"
                    );
                    tracing::warn!(app = %app, generation = generation.0, message_id = journal::MSG_ROLL_FINISHED, "{message}");
                    for w in waiters {
                        let _ = w.send(Outcome {
                            ok: false,
                            generation: generation.0,
                            message: message.clone(),
                            output: Vec::new(),
                        });
                    }
                    return;
                }
                self.ctx.metrics.restart(RestartOutcome::Superseded);
                // Whoever waited for the superseded restart now waits for the one that replaces
                // it: it deploys the newer release, which is what they asked for.
                self.start_restart(mode, waiters);
                return;
            }
            RollResult::Done => {
                self.ctx.metrics.restart(RestartOutcome::Succeeded);
                let message = match &roll.rollback {
                    None => {
                        self.end_roll(generation, Phase::Steady);
                        self.history.push(generation);
                        self.start_watch(generation, roll.old_base);
                        format!(
                            "{} restart to generation {generation} finished: {} workers replaced in {:.1}s",
                            roll.mode.as_str(),
                            roll.total,
                            took.as_secs_f64()
                        )
                    }
                    Some(rb) => {
                        // The release rolled back from, and the one brought back, give way to
                        // the new generation: a next rollback goes further back.
                        self.history.retain(|g| *g != rb.from && *g != rb.to);
                        self.history.push(generation);
                        let message = format!(
                            "rolled back from generation {} to the release of generation {} as generation {generation}: {} workers replaced in {:.1}s",
                            rb.from,
                            rb.to,
                            roll.total,
                            took.as_secs_f64()
                        );
                        if rb.trigger == RollbackTrigger::Operator {
                            self.end_roll(generation, Phase::Steady);
                        } else {
                            // Rolled back by itself: nothing new starts until an operator
                            // looked (a restart, or `baton resume`).
                            let reason = format!(
                                "{}; rolled back to the release of generation {}",
                                rb.reason, rb.to
                            );
                            tracing::error!(
                                app = %app, generation = rb.from.0,
                                message_id = journal::MSG_RESISTANCE_ENTERED,
                                "resisting deployment error: {reason}"
                            );
                            self.end_roll(
                                generation,
                                Phase::Resisting(Resistance {
                                    since: SystemTime::now(),
                                    reason,
                                    generation: rb.from,
                                    output: Vec::new(),
                                }),
                            );
                        }
                        message
                    }
                };
                tracing::info!(app = %app, generation = generation.0, message_id = journal::MSG_ROLL_FINISHED, "{message}");
                Outcome {
                    ok: true,
                    generation: generation.0,
                    message,
                    output: Vec::new(),
                }
            }
            RollResult::Resisting(failure) => {
                self.ctx.metrics.restart(RestartOutcome::Resisted);
                // The new release's failures say nothing of the old one, which now refills.
                self.backoff.failures = 0;
                let reason = failure.to_string();
                tracing::error!(
                    app = %app, generation = generation.0, worker = failure.worker.map(|w| w.0),
                    message_id = journal::MSG_RESISTANCE_ENTERED,
                    "resisting deployment error: {reason}; the workers of generation {} keep serving",
                    self.ctx.state().generation
                );
                for line in &failure.output {
                    match failure.worker {
                        Some(w) => tracing::error!(app = %app, worker = w.0, "worker {w}: {line}"),
                        None => tracing::error!(app = %app, "{line}"),
                    }
                }
                let old = self.ctx.state().generation;
                self.end_roll(
                    old,
                    Phase::Resisting(Resistance {
                        since: SystemTime::now(),
                        reason: reason.clone(),
                        generation,
                        output: failure.output.clone(),
                    }),
                );
                let message = format!("resisting deployment error: {reason}");
                tracing::error!(app = %app, generation = generation.0, message_id = journal::MSG_ROLL_FINISHED,
                    "restart to generation {generation} failed: {message}");
                Outcome {
                    ok: false,
                    generation: generation.0,
                    message,
                    output: failure.output,
                }
            }
            RollResult::Rejected(failure) => {
                // Without resistance: the old generation stays the one new workers come from,
                // and nothing is frozen.
                self.ctx.metrics.restart(RestartOutcome::Failed);
                let old = self.ctx.state().generation;
                self.end_roll(old, Phase::Steady);
                let message = format!("{failure}; generation {old} keeps serving");
                tracing::error!(app = %app, generation = generation.0, message_id = journal::MSG_ROLL_FINISHED,
                    "restart to generation {generation} failed: {message}");
                Outcome {
                    ok: false,
                    generation: generation.0,
                    message,
                    output: Vec::new(),
                }
            }
            RollResult::Failed { message, output } => {
                self.ctx.metrics.restart(RestartOutcome::Failed);
                self.end_roll(generation, Phase::Steady);
                tracing::error!(app = %app, generation = generation.0, message_id = journal::MSG_ROLL_FINISHED,
                    "restart to generation {generation} failed: {message}");
                Outcome {
                    ok: false,
                    generation: generation.0,
                    message,
                    output,
                }
            }
        };
        let mut outcome = outcome;
        if !roll.notes.is_empty() {
            outcome.message = format!("{} ({})", outcome.message, roll.notes.join("; "));
        }
        // READY=1 ends the reload in systemd's eyes, whatever the outcome.
        self.ctx.notifier.ready();
        for w in roll.waiters {
            let _ = w.send(outcome.clone());
        }
    }

    /// Watch the generation just rolled out for `canary.watch`, against what the older ones
    /// served during its roll (`old_base`: their figures when it began). Only when there is
    /// an earlier generation to roll back to.
    fn start_watch(&mut self, generation: Generation, old_base: crate::canary::Tally) {
        let watch = self.ctx.config().canary.watch.get();
        if watch.is_zero() || self.previous_generation(generation).is_none() {
            return;
        }
        let w = Watch {
            generation,
            until: Instant::now() + watch,
            until_wall: SystemTime::now() + watch,
            base: self.ctx.pool.tally(generation),
            // Exits inside workers against the older generations' whole life.
            baseline: {
                let life = self.ctx.pool.tally_before(generation);
                life.since(old_base).lived(life)
            },
            looks: crate::canary::Looks::default(),
        };
        let progress = WatchProgress {
            generation,
            until: w.until_wall,
            new: Tally::default(),
            old: w.baseline,
        };
        tracing::info!(
            app = %self.ctx.config().name, generation = generation.0,
            "watching generation {generation} for {} (canary.watch): a death or worse figures roll it back",
            humantime::format_duration(watch)
        );
        self.watch = Some(w);
        self.ctx.update(|s| s.watch = Some(progress));
    }

    /// The roll ended: new workers come from `generation` from now on, and the phase is `to`
    /// (unless baton is stopping meanwhile: that phase is final).
    fn end_roll(&self, generation: Generation, to: Phase) {
        let stopping = self.stopping;
        self.ctx.update(|s| {
            s.generation = generation;
            if !stopping && let Err(e) = s.enter(to) {
                tracing::error!("{e}");
            }
        });
    }

    fn leave_resistance(&mut self, why: &str) -> bool {
        let Phase::Resisting(r) = self.ctx.state().phase else {
            return false;
        };
        tracing::info!(
            app = %self.ctx.config().name, generation = r.generation.0,
            message_id = journal::MSG_RESISTANCE_LEFT,
            "left resistance mode ({why}); it was: {}", r.reason
        );
        self.ctx.enter(Phase::Steady);
        true
    }

    /// Outside a roll, keep at least `min` ready workers (replacing what died) and spawn on
    /// demand, one per queued request, up to `max`; from the current generation (in resistance
    /// mode that is the old, pinned one), with backoff after failures.
    fn reconcile(&mut self) {
        if self.stopping || self.roll.is_some() {
            return;
        }
        let ready = self.ctx.pool.ready_count();
        let w = &self.ctx.config().workers;
        let (min, max) = (w.min(), w.max().max(w.min()));
        let queued = self.ctx.pool.queue_len();
        let wanted = min.max((ready + queued).min(max));
        let missing = wanted.saturating_sub(ready + self.pending_replacements);
        let state = self.ctx.state();
        let generation = state.generation;
        // Resisting with fewer workers than `min`: capacity comes first, from the old, proven
        // release, at once (its own failures still back off).
        let short = state.phase.resisting().is_some() && ready < min;
        for _ in 0..missing {
            self.pending_replacements += 1;
            let ctx = self.ctx.clone();
            let cancel = self.replacements.child_token();
            let delay = if short && self.backoff.failures == 0 {
                Duration::ZERO
            } else {
                self.backoff.delay()
            };
            self.ctx.tasks.spawn(async move {
                let result = tokio::select! {
                    _ = cancel.cancelled() => Err(worker::BootError::Cancelled),
                    _ = tokio::time::sleep(delay) => worker::spawn(&ctx, generation, &cancel).await,
                };
                let _ = ctx.events.send(Event::ReplacementDone(result));
            });
        }
    }

    /// Between restarts: stop workers idle beyond `idle_timeout` (down to `min`, never while
    /// resisting), and recycle one worker at a time that passed `max_requests` or
    /// `memory_limit`: its replacement first, then drain it.
    #[allow(
        clippy::too_many_lines,
        reason = "the between-restarts tick: its idle stops and its recycling share the ready \
                  list and the one-at-a-time guard, in the supervisor's own state"
    )]
    fn lifecycle(&mut self) {
        if self.stopping || self.roll.is_some() {
            return;
        }
        let workers = self.ctx.pool.workers();
        let w = &self.ctx.config().workers;
        let ready: Vec<_> = workers
            .iter()
            .filter(|v| v.state == WorkerState::Ready)
            .collect();
        let resisting = self.ctx.state().phase.resisting().is_some();
        if !resisting && self.recycling.is_none() {
            let idle_limit = w.idle_timeout.get();
            let mut surplus = ready.len().saturating_sub(w.min());
            for v in ready.iter().filter(|v| v.in_flight == 0) {
                if surplus == 0 {
                    break;
                }
                let idle = v.last_used.unwrap_or(v.uptime);
                if idle >= idle_limit {
                    surplus -= 1;
                    // Draining at once keeps the next tick from counting it as ready.
                    self.ctx.pool.start_draining(v.id);
                    tracing::info!(
                        app = %self.ctx.config().name, worker = v.id.0, generation = v.generation.0,
                        pid = v.pid, unit = v.unit.as_deref(),
                        "worker {} idle for {}; stopping it", v.id, humantime::format_duration(Duration::from_secs(idle.as_secs()))
                    );
                    let ctx = self.ctx.clone();
                    let id = v.id;
                    self.ctx
                        .tasks
                        .spawn(async move { worker::drain_and_stop(&ctx, id).await });
                }
            }
        }
        if self.recycling.is_some() || self.recycle_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let memory_limit = w.memory_limit.0;
        let max_request_time = Some(w.max_request_time()).filter(|d| !d.is_zero());
        // A stuck worker first: it holds visitors (or held them until their 504).
        let stuck = ready.iter().find_map(|v| {
            let late = v
                .busy_for
                .zip(max_request_time)
                .is_some_and(|(busy, limit)| busy >= limit);
            (v.stuck || late).then(|| {
                (
                    v,
                    format!(
                        "left a request unanswered for max_request_time ({})",
                        humantime::format_duration(max_request_time.unwrap_or_default())
                    ),
                )
            })
        });
        if stuck.is_some() {
            self.ctx
                .metrics
                .limit(crate::metrics::Limit::MaxRequestTime);
        }
        let candidate = stuck.or_else(|| {
            ready.iter().find_map(|v| {
                if let Some(limit) = w.request_limit(v.id.0)
                    && v.processed >= limit
                {
                    return Some((v, format!("served {} requests (max_requests)", v.processed)));
                }
                if memory_limit > 0 && v.memory_bytes > memory_limit {
                    return Some((
                        v,
                        format!(
                            "uses {} MiB (memory_limit {} MiB)",
                            v.memory_bytes >> 20,
                            memory_limit >> 20
                        ),
                    ));
                }
                None
            })
        });
        let Some((old, why)) = candidate else { return };
        tracing::info!(
            app = %self.ctx.config().name, worker = old.id.0, generation = old.generation.0,
            pid = old.pid, unit = old.unit.as_deref(),
            "recycling worker {}: it {why}", old.id
        );
        let ctx = self.ctx.clone();
        let cancel = self.replacements.child_token();
        let (old_id, generation) = (old.id, self.ctx.state().generation);
        self.recycling = Some(old_id);
        self.ctx.tasks.spawn(async move {
            let result = worker::spawn(&ctx, generation, &cancel).await;
            if result.is_ok() {
                worker::drain_and_stop(&ctx, old_id).await;
            }
            let _ = ctx.events.send(Event::RecycleDone(result));
        });
    }

    /// READY=1 once the first generation is complete.
    fn check_started(&mut self) {
        if !matches!(self.ctx.state().phase, Phase::Starting) {
            return;
        }
        let ready = self.ctx.pool.ready_count();
        if ready >= self.ctx.config().workers.min() {
            self.ctx.enter(Phase::Steady);
            tracing::info!(app = %self.ctx.config().name, "{ready} workers ready");
            self.ctx.notifier.ready();
        }
    }

    /// Take over the workers a previous baton left running, if they still answer; stop the rest.
    async fn adopt(&mut self) {
        let mut found = self.ctx.spawner.adopt().await;
        if found.is_empty() {
            return;
        }
        // Newest generation first: those are the ones to keep when there are too many.
        found.sort_by_key(|a| std::cmp::Reverse((a.generation, a.id)));
        let target = self.ctx.config().workers.max();
        let mut kept = 0;
        let mut newest = None;
        for a in found {
            self.ctx
                .next_worker
                .fetch_max(a.id.0 + 1, Ordering::Relaxed);
            if self.highest_generation < a.generation {
                self.highest_generation = a.generation;
            }
            let ok = kept < target && worker::adopt(&self.ctx, &a).await;
            if ok {
                kept += 1;
                newest = newest.max(Some(a.generation));
                let config = self.ctx.config();
                self.ctx.pins().entry(a.generation).or_insert(Pinned {
                    directory: a.directory.clone(),
                    config,
                });
            } else {
                tracing::info!(app = %self.ctx.config().name, worker = a.id.0, unit = a.process.unit.as_deref(),
                    "stopping stray worker {} left by a previous baton", a.id);
                self.ctx
                    .spawner
                    .stop(
                        a.id,
                        &a.process,
                        self.ctx.config().restart.stop_timeout.get(),
                    )
                    .await;
            }
        }
        if let Some(g) = newest {
            tracing::info!(app = %self.ctx.config().name, generation = g.0, "adopted {kept} running workers");
            self.ctx.update(|s| s.generation = g);
            self.history = vec![g];
        }
    }

    async fn shutdown(&mut self) {
        self.begin_stop();
        if self.roll.is_some() {
            // Cancelled by begin_stop: let the roll clean up its spawning workers before the
            // rest are stopped.
            while let Some(ev) = self.events.recv().await {
                if let Event::RollDone(r) = ev {
                    self.finish_roll(r);
                    break;
                }
            }
        }
        if self.ctx.spawner.workers_outlive_manager() {
            // systemd stops the worker units after baton on `systemctl stop` and keeps them
            // for the next baton on `systemctl restart`.
            tracing::info!(app = %self.ctx.config().name, "leaving the worker units to systemd");
        } else {
            let ids: Vec<_> = self.ctx.pool.workers().iter().map(|w| w.id).collect();
            futures_util::future::join_all(ids.into_iter().map(|id| worker::stop(&self.ctx, id)))
                .await;
            tracing::info!(app = %self.ctx.config().name, "all workers stopped");
        }
        self.ctx.closed.cancel();
        self.ctx.tasks.close();
        // Every task ends on `stopping` or `closed`; a stop stuck in the backend is bounded by
        // stop_timeout, so this bound is only a guard.
        let bound = self.ctx.config().restart.stop_timeout.get() + Duration::from_secs(5);
        if tokio::time::timeout(bound, self.ctx.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                app = %self.ctx.config().name,
                "{} supervisor tasks still running at exit", self.ctx.tasks.len()
            );
        }
    }
}

/// Sample CPU and memory of every worker every couple of seconds.
pub async fn sample_usage(ctx: Arc<Context>) {
    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;
    use tokio::time::Instant;
    let mut last: HashMap<crate::spawn::WorkerId, (Instant, Duration)> = HashMap::new();
    // The processes seen inside each ready worker at the last sample, and when.
    let mut inside: HashMap<crate::spawn::WorkerId, (Instant, BTreeSet<u32>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let workers = ctx.pool.workers();
        last.retain(|id, _| workers.iter().any(|w| w.id == *id));
        inside.retain(|id, _| {
            workers
                .iter()
                .any(|w| w.id == *id && w.state == WorkerState::Ready)
        });
        for w in workers {
            let Some(process) = ctx.pool.process(w.id) else {
                continue;
            };
            // The worker's whole process group (or unit cgroup), read on the blocking pool.
            let spawner = ctx.spawner.clone();
            let of = process.clone();
            let (pids, measured) = tokio::task::spawn_blocking(move || {
                let pids = spawner.processes(&of);
                let usage = crate::spawn::group_usage(&pids);
                (pids, usage)
            })
            .await
            .unwrap_or_default();
            let now = Instant::now();
            if w.state == WorkerState::Ready && !pids.is_empty() {
                // Processes of a ready worker that ended since the last sample, beside the
                // worker's own (whose end is its death): for the canary judge, an app
                // server's master restarting what crashed.
                let pids: BTreeSet<u32> = pids.into_iter().collect();
                if let Some((then, before)) = inside.insert(w.id, (now, pids.clone())) {
                    let ended = before
                        .difference(&pids)
                        .filter(|p| Some(**p) != process.pid)
                        .count() as u64;
                    ctx.pool.churn(w.id, ended, now.duration_since(then));
                }
            }
            let Some(usage) = ctx.spawner.usage(&process, measured).await else {
                continue;
            };
            let cpu = match last.insert(w.id, (now, usage.cpu_time)) {
                Some((then, before)) => {
                    let wall = now.duration_since(then).as_secs_f64();
                    if wall > 0.0 {
                        usage.cpu_time.saturating_sub(before).as_secs_f64() / wall * 100.0
                    } else {
                        0.0
                    }
                }
                None => 0.0,
            };
            ctx.pool.set_usage(w.id, cpu, usage.memory_bytes);
        }
    }
}
