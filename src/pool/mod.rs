//! The worker pool: who is alive, in which state, and which worker gets the next request.
//!
//! Ownership rule: membership and state of workers change only through the supervisor
//! ([`crate::restart`]) and the tasks it starts; the proxy only takes and returns leases, which
//! move the in-flight counters. Everything sits behind one short-held mutex; no lock is held
//! across an `.await`.

use crate::canary::{Counter, Tally};
use crate::spawn::{Generation, StartedWorker, WorkerId};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The state a worker is in, as `baton status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Started, not yet ready: gets no requests.
    Spawning,
    /// Gets requests.
    Ready,
    /// Gets no new requests; waits for its in-flight ones.
    Draining,
    /// Being stopped.
    Stopping,
}

impl WorkerState {
    /// Counts toward the pool's size: started or serving, not on its way out.
    pub fn is_alive(self) -> bool {
        matches!(self, WorkerState::Spawning | WorkerState::Ready)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Spawning => "spawning",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Stopping => "stopping",
        }
    }
}

/// One worker as the pool knows it.
#[derive(Debug)]
pub struct Worker {
    pub id: WorkerId,
    pub generation: Generation,
    pub state: WorkerState,
    pub addr: SocketAddr,
    pub process: StartedWorker,
    pub in_flight: usize,
    pub processed: u64,
    pub spawned_at: Instant,
    pub last_used: Option<Instant>,
    /// When each request in flight was given to it (its oldest: drain reports, status, and
    /// `max_request_time`).
    requests: Vec<Instant>,
    /// Left a request unanswered past `max_request_time`: to be replaced.
    pub stuck: bool,
    /// When it became ready (the start of its settle period).
    pub ready_at: Option<Instant>,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    /// Set when baton stops the worker with requests still in flight (drain_timeout passed).
    pub cut: CancellationToken,
    /// The cut was of a worker whose pages hang (see [`Pool::mark_hung`]).
    hung: Arc<std::sync::atomic::AtomicBool>,
    /// What its answers came to, for the canary judge (added to by the data plane).
    pub outcomes: Arc<Counter>,
    /// The data plane's state for it (its idle connections), made on its first lease.
    attached: Attached,
}

/// What the data plane keeps for one worker (its idle connections to it). The pool holds it
/// for the worker's life and hands it out with every lease, and knows only how to close what
/// is idle in it: so the supervisor's modules never reach the HTTP client.
pub trait Attachment: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Close what is idle in it (the worker drains).
    fn close_idle(&self);
}

type Attached = Arc<std::sync::OnceLock<Arc<dyn Attachment>>>;

impl Worker {
    /// A worker just started (state `Spawning`), with no history.
    pub fn new(
        id: WorkerId,
        generation: Generation,
        addr: SocketAddr,
        process: StartedWorker,
    ) -> Worker {
        Worker {
            id,
            generation,
            state: WorkerState::Spawning,
            addr,
            process,
            in_flight: 0,
            processed: 0,
            spawned_at: Instant::now(),
            last_used: None,
            requests: Vec::new(),
            stuck: false,
            ready_at: None,
            cpu_percent: 0.0,
            memory_bytes: 0,
            cut: CancellationToken::new(),
            hung: Arc::default(),
            outcomes: Arc::default(),
            attached: Attached::default(),
        }
    }

    /// A request given to it at `now`.
    fn begin(&mut self, now: Instant) {
        self.in_flight += 1;
        self.requests.push(now);
    }

    /// The request given to it at `since` ended.
    fn end(&mut self, since: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(i) = self.requests.iter().position(|t| *t == since) {
            self.requests.swap_remove(i);
        }
    }

    /// When its oldest request in flight was given to it.
    fn oldest(&self) -> Option<Instant> {
        self.requests.iter().min().copied()
    }
}

/// A copy of one worker's figures, taken under the lock.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub id: WorkerId,
    pub generation: Generation,
    pub state: WorkerState,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub unit: Option<String>,
    pub in_flight: usize,
    pub processed: u64,
    pub uptime: Duration,
    pub last_used: Option<Duration>,
    /// How long its oldest request in flight has run.
    pub busy_for: Option<Duration>,
    pub stuck: bool,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

/// Why a request got no worker.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("all workers are busy and the queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("no worker was free within max_queue_time ({})", humantime::format_duration(*.0))]
    QueueTimeout(Duration),
    #[error("the manager is shutting down")]
    ShuttingDown,
}

struct Grant {
    worker: WorkerId,
    generation: Generation,
    addr: SocketAddr,
    outcomes: Arc<Counter>,
    attached: Attached,
    cut: CancellationToken,
    hung: Arc<std::sync::atomic::AtomicBool>,
    request_timeout: Option<Duration>,
    max_request_time: Option<Duration>,
    since: Instant,
}

struct Waiter {
    tx: oneshot::Sender<Grant>,
    avoid: Option<WorkerId>,
}

struct Inner {
    workers: BTreeMap<WorkerId, Worker>,
    waiters: VecDeque<Waiter>,
    closed: bool,
    /// Changed only by a config reload.
    limits: Limits,
    /// The outcome counters of every worker each recent generation had, gone ones too: a
    /// generation's figures are not lost when its workers are.
    counters: BTreeMap<Generation, Vec<Arc<Counter>>>,
}

/// Generations whose figures are kept (the newest ones).
const KEPT_GENERATIONS: usize = 8;

/// How requests are spread over workers, and how long they may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// In-flight requests per worker; 0 = unlimited.
    pub concurrency: usize,
    /// Requests that may wait for a free worker.
    pub max_queue: usize,
    /// How long a request may wait for one (`None`: as long as it takes).
    pub max_queue_time: Option<Duration>,
    /// How long a worker may take to begin its answer (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// A worker with a request in flight this long is replaced (`None`: never).
    pub max_request_time: Option<Duration>,
}

impl Limits {
    /// The one place `[workers]` becomes the pool's limits: at start and at every reload.
    pub fn from_config(workers: &crate::config::WorkersConfig) -> Limits {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Limits {
            concurrency: workers.concurrency,
            max_queue: workers.max_queue,
            max_queue_time: nonzero(workers.max_queue_time.get()),
            request_timeout: nonzero(workers.request_timeout.get()),
            max_request_time: nonzero(workers.max_request_time()),
        }
    }
}

pub struct Pool {
    inner: Mutex<Inner>,
    /// Woken whenever a worker's state or load changes in a way a waiter may care about.
    changed: Notify,
    /// Woken when a request starts waiting for a worker (on-demand spawning).
    demand: Notify,
}

/// The right to send one request to one worker; returned when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    pub worker: WorkerId,
    pub generation: Generation,
    pub addr: SocketAddr,
    /// What the worker's answers came to, for the canary judge.
    pub outcomes: Arc<Counter>,
    /// `[workers] request_timeout` when the lease was granted.
    pub request_timeout: Option<Duration>,
    /// `[workers] max_request_time` when the lease was granted.
    pub max_request_time: Option<Duration>,
    /// When it was granted.
    pub since: Instant,
    attached: Attached,
    cut: CancellationToken,
    hung: Arc<std::sync::atomic::AtomicBool>,
}

impl Lease {
    /// The data plane's state for this worker, made by `init` at its first lease. `None`
    /// only if something of another type was attached to the worker first.
    pub fn attached<T: Attachment>(&self, init: impl FnOnce() -> T) -> Option<Arc<T>> {
        let attached = self.attached.get_or_init(|| Arc::new(init())).clone();
        let any: Arc<dyn std::any::Any + Send + Sync> = attached;
        any.downcast::<T>().ok()
    }

    /// Whether baton stopped this worker with the request in flight (after drain_timeout):
    /// such a request was deliberately cut and is not retried elsewhere.
    pub fn was_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Cut because the worker's pages hang: a request that may be sent again goes to
    /// another worker (see [`Pool::mark_hung`]).
    pub fn cut_as_hung(&self) -> bool {
        self.was_cut() && self.hung.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves when baton is about to stop this worker with the request in flight: a tunnel
    /// then closes its client side properly first.
    pub async fn cut(&self) {
        self.cut.cancelled().await
    }
}

impl Lease {
    /// The worker left this request unanswered past `max_request_time`: the supervisor
    /// replaces it.
    pub fn stuck(&self) {
        self.pool.mark_stuck(self.worker);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.worker, self.since);
    }
}

/// Cleans up after a queued request whose client went away after it was granted a worker.
struct QueuedRequest {
    pool: Arc<Pool>,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Drop for QueuedRequest {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(g) = rx.try_recv() {
                self.pool.release(g.worker, g.since);
            }
        }
    }
}

impl Pool {
    pub fn new(limits: Limits) -> Arc<Pool> {
        Arc::new(Pool {
            inner: Mutex::new(Inner {
                workers: BTreeMap::new(),
                waiters: VecDeque::new(),
                closed: false,
                limits,
                counters: BTreeMap::new(),
            }),
            changed: Notify::new(),
            demand: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in short, non-panicking code; carry on
        // with the data rather than take the whole proxy down.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Get a worker for one request: the ready one with the fewest in-flight requests (ties:
    /// the least recently used), or wait in the queue.
    ///
    /// `avoid`: a worker that just failed this request (its retry). Another one is taken when
    /// one is free; when none is, the avoided one is still better than waiting (the retry goes
    /// on a fresh connection): a preference, never a condition, so that a waiter can always be
    /// served by whichever worker frees up first and the queue never stalls behind it.
    pub async fn acquire(self: &Arc<Self>, avoid: Option<WorkerId>) -> Result<Lease, Rejected> {
        let rx = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(Rejected::ShuttingDown);
            }
            inner.waiters.retain(|w| !w.tx.is_closed());
            let concurrency = inner.limits.concurrency;
            if inner.waiters.is_empty()
                && let Some(g) = inner.grant(concurrency, avoid)
            {
                return Ok(self.lease(g));
            }
            if inner.waiters.len() >= inner.limits.max_queue {
                return Err(Rejected::QueueFull(inner.waiters.len()));
            }
            let max_queue_time = inner.limits.max_queue_time;
            let (tx, rx) = oneshot::channel();
            inner.waiters.push_back(Waiter { tx, avoid });
            // Whatever capacity is free goes to the queue now, in order: a request never
            // waits beside an idle worker for the next release to look at the queue.
            inner.dispatch();
            self.demand.notify_one();
            (rx, max_queue_time)
        };
        let (rx, max_queue_time) = rx;
        let mut queued = QueuedRequest {
            pool: self.clone(),
            rx: Some(rx),
        };
        let rx = queued.rx.as_mut().ok_or(Rejected::ShuttingDown)?;
        // Beyond max_queue_time the visitor is told to come back (503 + Retry-After) rather
        // than wait on: with every worker stuck, the queue sheds instead of growing. A grant
        // that races the deadline is given back by `QueuedRequest`'s drop.
        let granted = match max_queue_time {
            Some(limit) => match tokio::time::timeout(limit, rx).await {
                Ok(r) => r,
                Err(_) => return Err(Rejected::QueueTimeout(limit)),
            },
            None => rx.await,
        };
        match granted {
            Ok(g) => {
                queued.rx = None;
                Ok(self.lease(g))
            }
            Err(_) => Err(Rejected::ShuttingDown),
        }
    }

    fn lease(self: &Arc<Self>, g: Grant) -> Lease {
        Lease {
            pool: self.clone(),
            worker: g.worker,
            generation: g.generation,
            addr: g.addr,
            outcomes: g.outcomes,
            request_timeout: g.request_timeout,
            max_request_time: g.max_request_time,
            since: g.since,
            attached: g.attached,
            cut: g.cut,
            hung: g.hung,
        }
    }

    /// Requests a worker takes at once (0: any number), as the config says now.
    pub fn concurrency(&self) -> usize {
        self.lock().limits.concurrency
    }

    /// How long the oldest request in flight on a worker of the generations `of` picks has
    /// run (`None`: none in flight), for the judge: a release whose pages hang shows here
    /// long before any of its requests ends.
    pub fn oldest_request(&self, of: impl Fn(Generation) -> bool) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .workers
            .values()
            .filter(|w| of(w.generation))
            .filter_map(Worker::oldest)
            .min()
            .map(|t| now.saturating_duration_since(t))
    }

    /// How many workers of the generations `of` picks have a request in flight for `bound` or
    /// longer, and how many they are.
    pub fn hung_workers(&self, of: impl Fn(Generation) -> bool, bound: Duration) -> (usize, usize) {
        let now = Instant::now();
        let inner = self.lock();
        let of: Vec<&Worker> = inner
            .workers
            .values()
            .filter(|w| of(w.generation) && w.state == WorkerState::Ready)
            .collect();
        let hung = of
            .iter()
            .filter(|w| {
                w.oldest()
                    .is_some_and(|t| now.saturating_duration_since(t) >= bound)
            })
            .count();
        (hung, of.len())
    }

    /// Mark a worker stuck (see [`Lease::stuck`]).
    pub fn mark_stuck(&self, id: WorkerId) {
        if let Some(w) = self.lock().workers.get_mut(&id) {
            w.stuck = true;
        }
    }

    fn release(&self, id: WorkerId, since: Instant) {
        let mut inner = self.lock();
        let mut notify = false;
        if let Some(w) = inner.workers.get_mut(&id) {
            w.end(since);
            w.processed += 1;
            let now = Instant::now();
            w.last_used = Some(now);
            notify = w.state != WorkerState::Ready && w.in_flight == 0;
        }
        inner.dispatch();
        drop(inner);
        if notify {
            self.changed.notify_waiters();
        }
    }

    /// Stop routing to a worker (it drains): its idle connections are closed at once, and
    /// those in use are not given back.
    pub fn start_draining(&self, id: WorkerId) {
        let attached = self.lock().workers.get(&id).map(|w| w.attached.clone());
        self.set_state(id, WorkerState::Draining);
        if let Some(a) = attached.as_ref().and_then(|a| a.get()) {
            a.close_idle();
        }
    }

    /// Mark a worker whose in-flight requests baton is about to cut.
    pub fn mark_cut(&self, id: WorkerId) {
        if let Some(w) = self.lock().workers.get(&id) {
            w.cut.cancel();
        }
    }

    /// Cut a worker whose pages hang (its release was refused or rolled back): unlike a cut
    /// after drain_timeout, a request it held that may be sent again is sent to another worker.
    pub fn mark_hung(&self, id: WorkerId) {
        if let Some(w) = self.lock().workers.get(&id) {
            w.hung.store(true, std::sync::atomic::Ordering::Relaxed);
            w.cut.cancel();
        }
    }

    /// Resolves when a request has started waiting for a worker.
    pub async fn demand(&self) {
        self.demand.notified().await
    }

    /// Workers that take requests now.
    pub fn ready_count(&self) -> usize {
        self.lock()
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .count()
    }

    /// Requests waiting for a worker.
    pub fn queue_len(&self) -> usize {
        let mut inner = self.lock();
        inner.waiters.retain(|w| !w.tx.is_closed());
        inner.waiters.len()
    }

    /// Add a worker that was just started (state `Spawning`).
    pub fn insert(&self, worker: Worker) {
        let mut inner = self.lock();
        inner
            .counters
            .entry(worker.generation)
            .or_default()
            .push(worker.outcomes.clone());
        while inner.counters.len() > KEPT_GENERATIONS {
            inner.counters.pop_first();
        }
        inner.workers.insert(worker.id, worker);
        inner.dispatch();
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Take a worker out of routing for good: it is being stopped.
    pub fn mark_stopping(&self, id: WorkerId) {
        self.set_state(id, WorkerState::Stopping);
    }

    /// Change a worker's state to one that takes no requests. Ready is only ever reached
    /// through [`Pool::mark_ready`], which checks that the process still runs: no dead
    /// process is ever ready.
    fn set_state(&self, id: WorkerId, state: WorkerState) {
        debug_assert_ne!(state, WorkerState::Ready, "ready only through mark_ready");
        if let Some(w) = self.lock().workers.get_mut(&id) {
            w.state = state;
        }
        self.changed.notify_waiters();
    }

    /// Mark a spawning worker ready, unless its process is already gone: checked under the
    /// pool's lock, so an exit is either seen here (and the worker never routed to) or seen
    /// afterwards by its exit watcher, which then finds it `Ready` and removes it. No dead
    /// process is ever listed as ready.
    /// The worker's answer times count for the judge from `settle` on (see
    /// [`Counter::warm_up`]).
    pub fn warm_up(&self, id: WorkerId, settle: Duration) {
        if let Some(w) = self.lock().workers.get(&id) {
            w.outcomes.warm_up(settle);
        }
    }

    pub fn mark_ready(&self, id: WorkerId) -> bool {
        let mut inner = self.lock();
        let marked = match inner.workers.get_mut(&id) {
            Some(w) if w.state == WorkerState::Spawning && w.process.exit_reason().is_none() => {
                w.state = WorkerState::Ready;
                w.ready_at = Some(Instant::now());
                true
            }
            _ => false,
        };
        if marked {
            inner.dispatch();
        }
        drop(inner);
        self.changed.notify_waiters();
        marked
    }

    /// Take a worker out of the pool.
    pub fn remove(&self, id: WorkerId) -> Option<Worker> {
        let w = self.lock().workers.remove(&id);
        self.changed.notify_waiters();
        w
    }

    /// When a worker's process ends: if it was ready or draining (not being stopped or still
    /// spawning, whose owners handle the exit), take it out at once so no request goes to it.
    pub fn remove_if_unexpected(&self, id: WorkerId) -> Option<Worker> {
        let mut inner = self.lock();
        let unexpected = matches!(
            inner.workers.get(&id).map(|w| w.state),
            Some(WorkerState::Ready | WorkerState::Draining)
        );
        let w = if unexpected {
            inner.workers.remove(&id)
        } else {
            None
        };
        drop(inner);
        self.changed.notify_waiters();
        w
    }

    pub fn get(&self, id: WorkerId) -> Option<WorkerView> {
        let now = Instant::now();
        self.lock().workers.get(&id).map(|w| view(w, now))
    }

    pub fn process(&self, id: WorkerId) -> Option<StartedWorker> {
        self.lock().workers.get(&id).map(|w| w.process.clone())
    }

    /// A copy of every worker, in id order.
    pub fn workers(&self) -> Vec<WorkerView> {
        let now = Instant::now();
        self.lock().workers.values().map(|w| view(w, now)).collect()
    }

    /// What the workers of `generation` (live and gone) did with their requests so far, as the
    /// canary judge counts it.
    pub fn tally(&self, generation: Generation) -> Tally {
        self.lock()
            .counters
            .get(&generation)
            .map_or(Tally::default(), |c| {
                c.iter().fold(Tally::default(), |t, c| t.plus(c.read()))
            })
    }

    /// The same, summed over every generation before `generation` (the old side of a roll:
    /// a superseded roll may have left workers of two).
    pub fn tally_before(&self, generation: Generation) -> Tally {
        self.lock()
            .counters
            .range(..generation)
            .flat_map(|(_, c)| c.iter())
            .fold(Tally::default(), |t, c| t.plus(c.read()))
    }

    /// The answer times of a generation's workers, gone ones too (see [`Pool::tally`]).
    pub fn latencies(&self, generation: Generation) -> crate::canary::Latencies {
        self.lock()
            .counters
            .get(&generation)
            .map_or_else(Default::default, |c| {
                c.iter()
                    .fold(Default::default(), |l: crate::canary::Latencies, c| {
                        l.plus(&c.latencies())
                    })
            })
    }

    /// The same, summed over every generation before `generation`.
    pub fn latencies_before(&self, generation: Generation) -> crate::canary::Latencies {
        self.lock()
            .counters
            .range(..generation)
            .flat_map(|(_, c)| c.iter())
            .fold(Default::default(), |l: crate::canary::Latencies, c| {
                l.plus(&c.latencies())
            })
    }

    /// `ended` processes ended inside a worker over `watched` (see [`Counter::churn`]).
    pub fn churn(&self, id: WorkerId, ended: u64, watched: Duration) {
        if let Some(w) = self.lock().workers.get(&id) {
            w.outcomes.churn(ended, watched);
        }
    }

    /// Update a worker's CPU and memory figures.
    pub fn set_usage(&self, id: WorkerId, cpu_percent: f64, memory_bytes: u64) {
        if let Some(w) = self.lock().workers.get_mut(&id) {
            w.cpu_percent = cpu_percent;
            w.memory_bytes = memory_bytes;
        }
    }

    /// Wait until the worker has no request in flight (or is gone); false on timeout.
    pub async fn wait_idle(&self, id: WorkerId, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            match self.lock().workers.get(&id) {
                None => return true,
                Some(w) if w.in_flight == 0 => return true,
                Some(_) => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// New routing limits (a config reload); queued requests get freed capacity at once.
    pub fn set_limits(&self, limits: Limits) {
        let mut inner = self.lock();
        inner.limits = limits;
        inner.dispatch();
    }

    /// Refuse new requests and fail the queued ones; used at shutdown.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waiters.clear();
    }
}

impl Inner {
    fn pick(&self, concurrency: usize, avoid: Option<WorkerId>) -> Option<WorkerId> {
        self.workers
            .values()
            .filter(|w| {
                w.state == WorkerState::Ready && (concurrency == 0 || w.in_flight < concurrency)
            })
            // Ties go round: each ready worker gets its share, whatever its generation, so a
            // canary serves its part of the traffic, not all of it when the load is light.
            .min_by_key(|w| (Some(w.id) == avoid, w.in_flight, w.last_used))
            .map(|w| w.id)
    }

    fn grant(&mut self, concurrency: usize, avoid: Option<WorkerId>) -> Option<Grant> {
        let id = self.pick(concurrency, avoid)?;
        let w = self.workers.get_mut(&id)?;
        let now = Instant::now();
        w.begin(now);
        w.last_used = Some(now);
        Some(Grant {
            worker: id,
            generation: w.generation,
            addr: w.addr,
            outcomes: w.outcomes.clone(),
            attached: w.attached.clone(),
            cut: w.cut.clone(),
            hung: w.hung.clone(),
            request_timeout: self.limits.request_timeout,
            max_request_time: self.limits.max_request_time,
            since: now,
        })
    }

    /// Hand free capacity to queued requests, first come first served. Any free worker can
    /// serve the first waiter (`avoid` is a preference), so this stops only when no worker
    /// has room.
    fn dispatch(&mut self) {
        let concurrency = self.limits.concurrency;
        while let Some(waiter) = self.waiters.pop_front() {
            if waiter.tx.is_closed() {
                continue;
            }
            let Some(g) = self.grant(concurrency, waiter.avoid) else {
                // Nobody can be served until capacity frees up.
                self.waiters.push_front(waiter);
                return;
            };
            if let Err(g) = waiter.tx.send(g) {
                // The client left between the check and the send: give the slot back.
                if let Some(w) = self.workers.get_mut(&g.worker) {
                    w.end(g.since);
                }
            }
        }
    }

    /// The invariant the queue rests on: nobody waits while a ready worker has room.
    #[cfg(test)]
    fn stalled(&self) -> bool {
        let open = self.waiters.iter().filter(|w| !w.tx.is_closed()).count();
        open > 0 && self.pick(self.limits.concurrency, None).is_some()
    }
}

fn view(w: &Worker, now: Instant) -> WorkerView {
    WorkerView {
        id: w.id,
        generation: w.generation,
        state: w.state,
        addr: w.addr,
        pid: w.process.pid,
        unit: w.process.unit.clone(),
        in_flight: w.in_flight,
        processed: w.processed,
        uptime: now.saturating_duration_since(w.spawned_at),
        last_used: w.last_used.map(|t| now.saturating_duration_since(t)),
        busy_for: w.oldest().map(|t| now.saturating_duration_since(t)),
        stuck: w.stuck,
        cpu_percent: w.cpu_percent,
        memory_bytes: w.memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::OutputTail;
    use crate::util::Rng;
    use tokio::sync::watch;

    fn worker(id: u64, generation: u64, state: WorkerState) -> Worker {
        let (_tx, rx) = watch::channel(None);
        let process = StartedWorker {
            pid: None,
            unit: None,
            exited: rx,
            output: OutputTail::default(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + id as u16));
        let mut w = Worker::new(WorkerId(id), Generation(generation), addr, process);
        w.state = state;
        w
    }

    #[tokio::test]
    async fn routes_to_least_busy_then_least_recently_used() {
        let pool = Pool::new(Limits {
            concurrency: 2,
            max_queue: 1,
            max_queue_time: None,
            request_timeout: None,
            max_request_time: None,
        });
        pool.insert(worker(1, 1, WorkerState::Ready));
        pool.insert(worker(2, 2, WorkerState::Ready));
        pool.insert(worker(3, 3, WorkerState::Draining));
        let a = pool.acquire(None).await.unwrap();
        assert_eq!(a.worker, WorkerId(1), "neither used yet: the first");
        let b = pool.acquire(None).await.unwrap();
        assert_eq!(b.worker, WorkerId(2), "then the least busy");
        drop(a);
        tokio::time::sleep(Duration::from_millis(2)).await;
        drop(b);
        // Both idle again: the one used least recently, whatever its generation (a canary
        // gets its share, not all of a light load).
        let a = pool.acquire(None).await.unwrap();
        assert_eq!(a.worker, WorkerId(1));
        let _b = pool.acquire(None).await.unwrap();
        let _c = pool.acquire(None).await.unwrap();
        let _d = pool.acquire(None).await.unwrap();
        // Both at concurrency 2: the next request queues, the one after is refused.
        let pool2 = pool.clone();
        let queued = tokio::spawn(async move { pool2.acquire(None).await.map(|l| l.worker) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.queue_len(), 1);
        assert_eq!(pool.acquire(None).await.err(), Some(Rejected::QueueFull(1)));
        drop(a);
        assert_eq!(queued.await.unwrap(), Ok(WorkerId(1)));
    }

    #[tokio::test]
    async fn a_client_that_leaves_the_queue_frees_its_place() {
        let pool = Pool::new(Limits {
            concurrency: 1,
            max_queue: 5,
            max_queue_time: None,
            request_timeout: None,
            max_request_time: None,
        });
        pool.insert(worker(1, 1, WorkerState::Ready));
        let held = pool.acquire(None).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(20), pool.acquire(None)).await;
        assert!(waiting.is_err());
        assert_eq!(pool.queue_len(), 0);
        drop(held);
        let again = pool.acquire(None).await.unwrap();
        assert_eq!(again.worker, WorkerId(1));
        assert_eq!(pool.get(WorkerId(1)).unwrap().in_flight, 1);
    }

    #[tokio::test]
    async fn a_retry_with_no_other_worker_takes_the_same_one_and_never_blocks_the_queue() {
        let pool = Pool::new(Limits {
            concurrency: 1,
            max_queue: 5,
            max_queue_time: None,
            request_timeout: None,
            max_request_time: None,
        });
        pool.insert(worker(1, 1, WorkerState::Ready));
        // The only worker failed a request: its retry gets it again rather than waiting for
        // another that does not exist.
        let retry = pool.acquire(Some(WorkerId(1))).await.unwrap();
        assert_eq!(retry.worker, WorkerId(1));
        drop(retry);
        // Two workers, one busy: a retry avoiding the idle one waits, and a plain request
        // behind it is served by the idle one at once, not after the busy one frees up.
        pool.insert(worker(2, 1, WorkerState::Ready));
        let busy = pool.acquire(None).await.unwrap();
        let idle = if busy.worker == WorkerId(1) { 2 } else { 1 };
        let other = pool.acquire(Some(WorkerId(idle))).await.unwrap();
        assert_eq!(
            other.worker.0, idle,
            "the avoided worker, since no other is free"
        );
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.acquire(None).await.map(|l| l.worker) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(other);
        let got = tokio::time::timeout(Duration::from_secs(1), queued).await;
        assert_eq!(got.unwrap().unwrap(), Ok(WorkerId(idle)));
        drop(busy);
    }

    /// Random requests, retries that avoid a worker, releases, clients that leave, workers
    /// that come, go and change state, limits that change: after every step, nobody waits
    /// while a ready worker has room, and every worker's in-flight count is the number of
    /// leases held on it.
    #[allow(
        clippy::too_many_lines,
        reason = "a property test's one loop of random steps, each checked against the invariants \
                  right after it"
    )]
    #[test]
    fn no_request_waits_while_a_worker_is_free() {
        use futures_util::FutureExt;
        use std::future::Future;
        use std::pin::Pin;
        type Waiting = Pin<Box<dyn Future<Output = Result<Lease, Rejected>>>>;
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let pool = Pool::new(Limits {
                concurrency: 1 + rng.index(3),
                max_queue: 1 + rng.index(8),
                max_queue_time: None,
                request_timeout: None,
                max_request_time: None,
            });
            let mut next_id = 1;
            let mut held: Vec<Lease> = Vec::new();
            let mut waiting: Vec<Waiting> = Vec::new();
            for step in 0..400 {
                let ids: Vec<u64> = pool.workers().iter().map(|w| w.id.0).collect();
                match rng.index(10) {
                    0 | 1 => waiting.push(Box::pin({
                        let p = pool.clone();
                        async move { p.acquire(None).await }
                    })),
                    2 if !ids.is_empty() => {
                        let avoid = WorkerId(ids[rng.index(ids.len())]);
                        waiting.push(Box::pin({
                            let p = pool.clone();
                            async move { p.acquire(Some(avoid)).await }
                        }))
                    }
                    3 | 4 if !held.is_empty() => drop(held.swap_remove(rng.index(held.len()))),
                    5 if !waiting.is_empty() => drop(waiting.swap_remove(rng.index(waiting.len()))),
                    6 => {
                        let state = [WorkerState::Spawning, WorkerState::Ready][rng.index(2)];
                        pool.insert(worker(next_id, next_id / 4, state));
                        next_id += 1;
                    }
                    7 if !ids.is_empty() => {
                        let id = WorkerId(ids[rng.index(ids.len())]);
                        match rng.index(3) {
                            0 => {
                                pool.mark_ready(id);
                            }
                            1 => pool.start_draining(id),
                            _ => {
                                pool.remove(id);
                            }
                        }
                    }
                    8 => pool.set_limits(Limits {
                        concurrency: rng.index(3),
                        max_queue: 1 + rng.index(8),
                        max_queue_time: None,
                        request_timeout: None,
                        max_request_time: None,
                    }),
                    _ => {}
                }
                // Every waiting request runs as far as it can (its task woken).
                let mut i = 0;
                while i < waiting.len() {
                    match waiting[i].poll_unpin(&mut cx) {
                        std::task::Poll::Ready(r) => {
                            drop(waiting.swap_remove(i));
                            if let Ok(lease) = r {
                                held.push(lease);
                            }
                        }
                        std::task::Poll::Pending => i += 1,
                    }
                }
                let inner = pool.lock();
                assert!(
                    !inner.stalled(),
                    "seed {seed} step {step}: a request waits beside a free worker"
                );
                for w in inner.workers.values() {
                    let leases = held.iter().filter(|l| l.worker == w.id).count();
                    assert_eq!(
                        w.in_flight, leases,
                        "seed {seed} step {step}: worker {}",
                        w.id
                    );
                }
            }
        }
    }
}
