//! The worker pool: who is alive, in which state, and which worker gets the next request.
//!
//! Ownership rule: membership and state of workers change only through the supervisor
//! ([`crate::restart`]) and the tasks it starts; the proxy only takes and returns leases, which
//! move the in-flight counters. Everything sits behind one short-held mutex; no lock is held
//! across an `.await`.

use crate::spawn::{Generation, StartedWorker, WorkerId};
use crate::upstream::Conns;
use std::cmp::Reverse;
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
    /// Since when the oldest request still in flight has run, for drain reports.
    pub busy_since: Option<Instant>,
    /// When it became ready (the start of its settle period).
    pub ready_at: Option<Instant>,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    /// Set when baton stops the worker with requests still in flight (drain_timeout passed).
    pub cut: CancellationToken,
    /// Its idle keep-alive connections (see [`crate::upstream`]).
    pub conns: Arc<Conns>,
}

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
            busy_since: None,
            ready_at: None,
            cpu_percent: 0.0,
            memory_bytes: 0,
            cut: CancellationToken::new(),
            conns: Arc::default(),
        }
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
    pub busy_for: Option<Duration>,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

/// Why a request got no worker.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("all workers are busy and the queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("the manager is shutting down")]
    ShuttingDown,
}

struct Grant {
    worker: WorkerId,
    addr: SocketAddr,
    conns: Arc<Conns>,
    cut: CancellationToken,
}

struct Waiter {
    tx: oneshot::Sender<Grant>,
    exclude: Option<WorkerId>,
}

struct Inner {
    workers: BTreeMap<WorkerId, Worker>,
    waiters: VecDeque<Waiter>,
    closed: bool,
    /// Changed only by a config reload.
    limits: Limits,
}

/// How requests are spread over workers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// In-flight requests per worker; 0 = unlimited.
    pub concurrency: usize,
    /// Requests that may wait for a free worker.
    pub max_queue: usize,
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
    pub addr: SocketAddr,
    /// The worker's connections: a request takes one, and gives it back when reusable.
    pub conns: Arc<Conns>,
    cut: CancellationToken,
}

impl Lease {
    /// Whether baton stopped this worker with the request in flight (after drain_timeout):
    /// such a request was deliberately cut and is not retried elsewhere.
    pub fn was_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Resolves when baton is about to stop this worker with the request in flight: a tunnel
    /// then closes its client side properly first.
    pub async fn cut(&self) {
        self.cut.cancelled().await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.worker);
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
                self.pool.release(g.worker);
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
    /// newest generation, then least recently used), or wait in the queue.
    pub async fn acquire(self: &Arc<Self>, exclude: Option<WorkerId>) -> Result<Lease, Rejected> {
        let rx = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(Rejected::ShuttingDown);
            }
            inner.waiters.retain(|w| !w.tx.is_closed());
            let concurrency = inner.limits.concurrency;
            if inner.waiters.is_empty()
                && let Some(g) = inner.grant(concurrency, exclude)
            {
                return Ok(self.lease(g));
            }
            if inner.waiters.len() >= inner.limits.max_queue {
                return Err(Rejected::QueueFull(inner.waiters.len()));
            }
            let (tx, rx) = oneshot::channel();
            inner.waiters.push_back(Waiter { tx, exclude });
            self.demand.notify_one();
            rx
        };
        let mut queued = QueuedRequest {
            pool: self.clone(),
            rx: Some(rx),
        };
        let rx = queued.rx.as_mut().ok_or(Rejected::ShuttingDown)?;
        match rx.await {
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
            addr: g.addr,
            conns: g.conns,
            cut: g.cut,
        }
    }

    fn release(&self, id: WorkerId) {
        let mut inner = self.lock();
        let mut notify = false;
        if let Some(w) = inner.workers.get_mut(&id) {
            w.in_flight = w.in_flight.saturating_sub(1);
            w.processed += 1;
            let now = Instant::now();
            w.last_used = Some(now);
            w.busy_since = if w.in_flight == 0 { None } else { w.busy_since };
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
        let conns = self.lock().workers.get(&id).map(|w| w.conns.clone());
        self.set_state(id, WorkerState::Draining);
        if let Some(c) = conns {
            c.close_idle();
        }
    }

    /// Mark a worker whose in-flight requests baton is about to cut.
    pub fn mark_cut(&self, id: WorkerId) {
        if let Some(w) = self.lock().workers.get(&id) {
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
        self.lock().workers.insert(worker.id, worker);
        self.changed.notify_waiters();
    }

    /// Change a worker's state; a newly ready worker takes queued requests at once.
    pub fn set_state(&self, id: WorkerId, state: WorkerState) {
        let mut inner = self.lock();
        if let Some(w) = inner.workers.get_mut(&id) {
            w.state = state;
        }
        if state == WorkerState::Ready {
            inner.dispatch();
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Mark a spawning worker ready, unless its process is already gone: checked under the
    /// pool's lock, so an exit is either seen here (and the worker never routed to) or seen
    /// afterwards by its exit watcher, which then finds it `Ready` and removes it. No dead
    /// process is ever listed as ready.
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
    fn pick(&self, concurrency: usize, exclude: Option<WorkerId>) -> Option<WorkerId> {
        self.workers
            .values()
            .filter(|w| {
                w.state == WorkerState::Ready
                    && Some(w.id) != exclude
                    && (concurrency == 0 || w.in_flight < concurrency)
            })
            .min_by_key(|w| (w.in_flight, Reverse(w.generation), w.last_used))
            .map(|w| w.id)
    }

    fn grant(&mut self, concurrency: usize, exclude: Option<WorkerId>) -> Option<Grant> {
        let id = self.pick(concurrency, exclude)?;
        let w = self.workers.get_mut(&id)?;
        w.in_flight += 1;
        if w.in_flight == 1 {
            w.busy_since = Some(Instant::now());
        }
        w.last_used = Some(Instant::now());
        Some(Grant {
            worker: id,
            addr: w.addr,
            conns: w.conns.clone(),
            cut: w.cut.clone(),
        })
    }

    /// Hand free capacity to queued requests, first come first served.
    fn dispatch(&mut self) {
        let concurrency = self.limits.concurrency;
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].tx.is_closed() {
                self.waiters.remove(i);
                continue;
            }
            let exclude = self.waiters[i].exclude;
            let Some(g) = self.grant(concurrency, exclude) else {
                if exclude.is_none() {
                    // Nobody can be served until capacity frees up.
                    return;
                }
                i += 1;
                continue;
            };
            let Some(waiter) = self.waiters.remove(i) else {
                return;
            };
            if let Err(g) = waiter.tx.send(g) {
                // The client left between the check and the send: give the slot back.
                if let Some(w) = self.workers.get_mut(&g.worker) {
                    w.in_flight -= 1;
                }
            }
        }
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
        busy_for: w.busy_since.map(|t| now.saturating_duration_since(t)),
        cpu_percent: w.cpu_percent,
        memory_bytes: w.memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::OutputTail;
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
    async fn routes_to_least_busy_then_newest_generation() {
        let pool = Pool::new(Limits {
            concurrency: 2,
            max_queue: 1,
        });
        pool.insert(worker(1, 1, WorkerState::Ready));
        pool.insert(worker(2, 2, WorkerState::Ready));
        pool.insert(worker(3, 3, WorkerState::Draining));
        let a = pool.acquire(None).await.unwrap();
        assert_eq!(a.worker, WorkerId(2), "newest ready generation first");
        let b = pool.acquire(None).await.unwrap();
        assert_eq!(b.worker, WorkerId(1), "then the least busy");
        let _c = pool.acquire(None).await.unwrap();
        let _d = pool.acquire(None).await.unwrap();
        // Both at concurrency 2: the next request queues, the one after is refused.
        let pool2 = pool.clone();
        let queued = tokio::spawn(async move { pool2.acquire(None).await.map(|l| l.worker) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.queue_len(), 1);
        assert_eq!(pool.acquire(None).await.err(), Some(Rejected::QueueFull(1)));
        drop(a);
        assert_eq!(queued.await.unwrap(), Ok(WorkerId(2)));
    }

    #[tokio::test]
    async fn a_client_that_leaves_the_queue_frees_its_place() {
        let pool = Pool::new(Limits {
            concurrency: 1,
            max_queue: 5,
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
}
