//! The supervisor against an in-memory backend, on paused time: workers are scripted per
//! generation (how long they boot, whether they exit, what they print), readiness is a scripted
//! probe, and tokio's clock jumps from one timer to the next, so a scenario that takes minutes
//! of a real roll runs in milliseconds.

#![allow(
    clippy::too_many_lines,
    reason = "a scenario reads as one story from setup to the last check"
)]

use super::*;
use crate::pool::{Lease, WorkerView};
use crate::readiness::{NotReady, Probe};
use crate::spawn::{ExitReason, OutputTail, SpawnError, StartedWorker, WorkerSpec};
use crate::util::Rng;
use async_trait::async_trait;
use std::collections::HashMap;
use std::net::SocketAddr;

/// How the workers of one generation behave.
#[derive(Clone, Debug)]
enum Release {
    /// Ready after this boot time.
    Good(Duration),
    /// Exit with this status this long after starting, before ready; print `output` first.
    ExitsAtBoot {
        after: Duration,
        status: i32,
        output: Vec<String>,
    },
    /// Never ready: runs until stopped.
    NeverReady,
    /// Ready after `boot`, then exit with status 2 this long after it became ready.
    DiesAfter { boot: Duration, lived: Duration },
    /// The backend cannot start it at all.
    CannotStart,
}

const BOOT: Duration = Duration::from_millis(200);

/// One worker the fake started.
struct FakeWorker {
    id: WorkerId,
    generation: u64,
    port: u16,
    release: Release,
    exit: watch::Sender<Option<ExitReason>>,
}

#[derive(Default)]
struct Fake {
    /// Each generation's release: set by a test, or pinned from `deployed` at its first start
    /// (as baton pins a release directory).
    releases: Mutex<HashMap<u64, Release>>,
    /// What is "on disk" now: the release a new generation gets.
    deployed: Mutex<Option<Release>>,
    workers: Mutex<Vec<FakeWorker>>,
    /// The most processes there ever were at once.
    peak: Mutex<usize>,
    /// When each start was asked for: (generation, time).
    starts: Mutex<Vec<(u64, Instant)>>,
    /// How long a stop takes (a worker that ignores SIGTERM until SIGKILL).
    stop_takes: Mutex<Duration>,
}

impl Fake {
    fn release(&self, generation: u64, r: Release) {
        self.releases.lock().unwrap().insert(generation, r);
    }

    /// Put a release "on disk": the next generation started gets it.
    fn deploy(&self, r: Release) {
        *self.deployed.lock().unwrap() = Some(r);
    }

    fn release_of(&self, generation: u64) -> Release {
        let deployed = self.deployed.lock().unwrap().clone();
        self.releases
            .lock()
            .unwrap()
            .entry(generation)
            .or_insert_with(|| deployed.unwrap_or(Release::Good(BOOT)))
            .clone()
    }

    /// End a worker as SIGKILL would.
    fn kill(&self, id: WorkerId) {
        for w in self.workers.lock().unwrap().iter() {
            if w.id == id {
                exit(&w.exit, ExitReason::Signaled(9));
            }
        }
    }

    fn kill_generation(&self, generation: u64) {
        for w in self.workers.lock().unwrap().iter() {
            if w.generation == generation {
                exit(&w.exit, ExitReason::Signaled(9));
            }
        }
    }

    fn peak(&self) -> usize {
        *self.peak.lock().unwrap()
    }

    /// Processes running now: started and not exited.
    fn live(&self) -> usize {
        self.workers
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.exit.borrow().is_none())
            .count()
    }

    fn starts(&self, generation: u64) -> Vec<Instant> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|(g, _)| *g == generation)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// The first exit wins; later ones change nothing.
fn exit(tx: &watch::Sender<Option<ExitReason>>, reason: ExitReason) {
    tx.send_if_modified(|e| {
        if e.is_none() {
            *e = Some(reason);
            true
        } else {
            false
        }
    });
}

#[async_trait]
impl Spawner for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &WorkerSpec) -> Result<StartedWorker, SpawnError> {
        let release = self.release_of(spec.generation.0);
        self.starts
            .lock()
            .unwrap()
            .push((spec.generation.0, Instant::now()));
        if let Release::CannotStart = release {
            return Err(SpawnError::Backend {
                worker: spec.id,
                message: "no such program".into(),
            });
        }
        let (tx, rx) = watch::channel(None);
        let output = OutputTail::default();
        self.workers.lock().unwrap().push(FakeWorker {
            id: spec.id,
            generation: spec.generation.0,
            port: spec.port,
            release: release.clone(),
            exit: tx.clone(),
        });
        let live = self.live();
        let mut peak = self.peak.lock().unwrap();
        *peak = (*peak).max(live);
        drop(peak);
        let (script_tx, script_out) = (tx.clone(), output.clone());
        tokio::spawn(async move {
            match release {
                Release::ExitsAtBoot {
                    after,
                    status,
                    output,
                } => {
                    tokio::time::sleep(after).await;
                    for l in output {
                        script_out.push(l);
                    }
                    exit(&script_tx, ExitReason::Exited(status));
                }
                Release::DiesAfter { boot, lived } => {
                    tokio::time::sleep(boot + lived).await;
                    exit(&script_tx, ExitReason::Exited(2));
                }
                _ => {}
            }
        });
        Ok(StartedWorker {
            pid: None,
            unit: None,
            exited: rx,
            output,
        })
    }

    async fn stop(&self, id: WorkerId, _worker: &StartedWorker, _timeout: Duration) {
        let takes = *self.stop_takes.lock().unwrap();
        if !takes.is_zero() {
            tokio::time::sleep(takes).await;
        }
        let tx = self
            .workers
            .lock()
            .unwrap()
            .iter()
            .find(|w| w.id == id)
            .map(|w| w.exit.clone());
        if let Some(tx) = tx {
            exit(&tx, ExitReason::Signaled(15));
        }
    }

    fn processes(&self, _worker: &StartedWorker) -> Vec<u32> {
        Vec::new()
    }
}

/// The scripted probe: a worker is ready once its release's boot time has passed.
struct FakeProbe(Arc<Fake>);

#[async_trait]
impl Probe for FakeProbe {
    async fn ready(
        &self,
        addr: SocketAddr,
        _http_path: Option<&str>,
        worker: &StartedWorker,
        timeout: Duration,
    ) -> Result<(), NotReady> {
        // The newest worker on this port: free_port() hands out a port nobody holds, so a
        // stopped worker's port can come back, and the probe runs right after its own start.
        let release = self
            .0
            .workers
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|w| w.port == addr.port())
            .map(|w| w.release.clone());
        let boot = match release {
            Some(Release::Good(d)) | Some(Release::DiesAfter { boot: d, .. }) => Some(d),
            _ => None,
        };
        tokio::select! {
            biased;
            reason = worker.wait_exit() => Err(NotReady::Exited(reason)),
            _ = tokio::time::sleep(timeout) => Err(NotReady::Timeout {
                after: timeout,
                addr,
                last: crate::readiness::Attempt::Refused,
            }),
            _ = async {
                match boot {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => Ok(()),
        }
    }
}

/// A supervisor on the fake backend, and what the tests look at.
struct Running {
    handle: Handle,
    fake: Arc<Fake>,
    /// The config file, for the tests that edit it before a restart.
    file: Option<tempfile::NamedTempFile>,
}

/// A config: `workers` and `restart` are lines added to those sections.
fn config_text(workers: &str, restart: &str) -> String {
    // The canary phase is off unless a test asks for it: the other tests count steps.
    let canary = if restart.contains("[canary]") {
        ""
    } else {
        "[canary]\nworkers = 0\n"
    };
    format!(
        "name = \"t\"\n[app]\ncommand = [\"true\"]\n[workers]\n{workers}\n[readiness]\ntimeout = \"2s\"\nsettle = \"300ms\"\n[restart]\nstop_timeout = \"1s\"\ndrain_timeout = \"5s\"\n{restart}\n{canary}"
    )
}

async fn start(workers: &str, restart: &str) -> Running {
    start_with(Fake::default(), workers, restart, false).await
}

async fn start_with(fake: Fake, workers: &str, restart: &str, from_file: bool) -> Running {
    let text = config_text(workers, restart);
    let config = Arc::new(Config::parse(&text, std::path::Path::new("t.toml")).unwrap());
    let file = from_file.then(|| {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &text).unwrap();
        f
    });
    let pool = Pool::new(crate::pool::Limits::from_config(&config.workers));
    let fake = Arc::new(fake);
    let (sup, handle) = Supervisor::new(
        config,
        file.as_ref().map(|f| f.path().to_owned()),
        pool,
        fake.clone(),
        Arc::new(FakeProbe(fake.clone())),
        Arc::new(Notifier::default()),
        Arc::new(crate::metrics::Metrics::default()),
    );
    tokio::spawn(sup.run());
    let r = Running { handle, fake, file };
    r.until("the first generation is up", |r| r.phase() == "steady")
        .await;
    r
}

impl Running {
    fn ctx(&self) -> &Arc<Context> {
        &self.handle.context
    }

    fn phase(&self) -> &'static str {
        self.ctx().state().phase.name()
    }

    fn generation(&self) -> u64 {
        self.ctx().state().generation.0
    }

    /// Ask for a restart and return where its outcome will arrive.
    async fn restart_later(&self, mode: Option<RestartMode>) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        assert!(
            self.handle
                .send(Command::Restart {
                    mode,
                    reply: Some(tx),
                })
                .await
        );
        rx
    }

    async fn restart(&self) -> Outcome {
        self.restart_later(None).await.await.unwrap()
    }

    async fn rollback(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        assert!(
            self.handle
                .send(Command::Rollback { reply: Some(tx) })
                .await
        );
        rx.await.unwrap()
    }

    async fn resume(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        assert!(self.handle.send(Command::Resume(tx)).await);
        rx.await.unwrap()
    }

    fn workers(&self) -> Vec<WorkerView> {
        self.ctx().pool.workers()
    }

    fn ready(&self) -> Vec<WorkerView> {
        self.workers()
            .into_iter()
            .filter(|w| w.state == WorkerState::Ready)
            .collect()
    }

    /// The generations of the ready workers, in worker order.
    fn ready_generations(&self) -> Vec<u64> {
        self.ready().iter().map(|w| w.generation.0).collect()
    }

    fn resistance(&self) -> Option<Resistance> {
        self.ctx().state().phase.resisting().cloned()
    }

    /// Wait (on the paused clock) until `f` holds; fail after five virtual minutes.
    async fn until(&self, what: &str, f: impl Fn(&Running) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "never happened: {what}; phase {}, workers {:#?}",
                self.phase(),
                self.workers()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Wait until a worker of the first generation is draining (its roll reached it).
    async fn until_the_old_worker_drains(&self) {
        self.until("the old worker drains", |r| {
            r.workers()
                .iter()
                .any(|w| w.generation.0 == 1 && w.state == WorkerState::Draining)
        })
        .await;
    }

    /// A lease on a ready worker, as a request in flight holds one.
    async fn lease(&self) -> Lease {
        self.ctx().pool.acquire(None).await.unwrap()
    }

    /// Sample the pool every millisecond until the returned guard is dropped: the fewest ready
    /// and the most alive (spawning or ready) workers seen.
    fn watch_pool(&self) -> PoolWatch {
        let seen = Arc::new(Mutex::new((usize::MAX, 0usize)));
        let pool = self.ctx().pool.clone();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let w = pool.workers();
                let ready = w.iter().filter(|w| w.state == WorkerState::Ready).count();
                let alive = w.iter().filter(|w| w.state.is_alive()).count();
                {
                    let mut s = s.lock().unwrap();
                    s.0 = s.0.min(ready);
                    s.1 = s.1.max(alive);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        PoolWatch { seen, task }
    }

    /// Every step a roll reports, collected as it happens.
    fn watch_steps(&self) -> Arc<Mutex<Vec<WaitingOn>>> {
        let steps = Arc::new(Mutex::new(Vec::new()));
        let mut rx = self.ctx().subscribe();
        let s = steps.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().phase.rolling().cloned();
                if let Some(p) = p {
                    let mut s = s.lock().unwrap();
                    if s.last() != Some(&p.waiting_on) {
                        s.push(p.waiting_on);
                    }
                }
            }
        });
        steps
    }
}

struct PoolWatch {
    seen: Arc<Mutex<(usize, usize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl PoolWatch {
    fn fewest_ready(&self) -> usize {
        self.seen.lock().unwrap().0
    }
    fn most_alive(&self) -> usize {
        self.seen.lock().unwrap().1
    }
}

impl Drop for PoolWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bad_boot() -> Release {
    Release::ExitsAtBoot {
        after: Duration::from_millis(100),
        status: 1,
        output: vec!["SyntaxError: invalid syntax".into()],
    }
}

fn kind(w: &WaitingOn) -> &'static str {
    match w {
        WaitingOn::Starting => "starting",
        WaitingOn::Spawning { .. } => "spawning",
        WaitingOn::Settling { .. } => "settling",
        WaitingOn::Canary(_) => "canary",
        WaitingOn::Draining(_) => "draining",
        WaitingOn::Stopping { .. } => "stopping",
        WaitingOn::StoppingAll(_) => "stopping all",
        WaitingOn::Done => "done",
    }
}

// ---- starting -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_first_generation_comes_up_and_the_phase_is_steady() {
    let r = start("count = 3", "").await;
    assert_eq!(r.ready_generations(), [1, 1, 1]);
    assert_eq!(r.generation(), 1);
    assert_eq!(r.fake.peak(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_phase_is_starting_until_min_workers_are_ready() {
    let fake = Fake::default();
    fake.release(1, Release::Good(Duration::from_millis(1500)));
    let fake = Arc::new(fake);
    let config = Arc::new(Config::parse(&config_text("count = 2", ""), "t.toml".as_ref()).unwrap());
    let (sup, handle) = Supervisor::new(
        config,
        None,
        Pool::new(crate::pool::Limits {
            concurrency: 0,
            max_queue: 10,
            max_queue_time: None,
            request_timeout: None,
            max_request_time: None,
        }),
        fake.clone(),
        Arc::new(FakeProbe(fake.clone())),
        Arc::new(Notifier::default()),
        Arc::new(crate::metrics::Metrics::default()),
    );
    tokio::spawn(sup.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.context.state().phase.name(), "starting");
    let health =
        crate::status::Health::new(&handle.context.state(), &handle.context.pool.workers());
    assert_eq!(
        (health.status.as_str(), health.http_status()),
        ("unavailable", 503)
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(handle.context.state().phase.name(), "steady");
}

// ---- rolling restarts -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_roll_replaces_every_worker() {
    let r = start("count = 3", "").await;
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.generation, 2);
    assert!(
        outcome
            .message
            .starts_with("rolling restart to generation 2 finished: 3 workers replaced"),
        "{outcome:?}"
    );
    assert_eq!(r.ready_generations(), [2, 2, 2]);
    assert_eq!(r.workers().len(), 3);
    assert_eq!((r.phase(), r.generation()), ("steady", 2));
}

#[tokio::test(start_paused = true)]
async fn a_roll_keeps_every_worker_serving_and_at_most_max_surge_extra() {
    let r = start("count = 4", "").await;
    let pool = r.watch_pool();
    assert!(r.restart().await.ok);
    assert_eq!(pool.fewest_ready(), 4, "a roll never lowers capacity");
    assert_eq!(pool.most_alive(), 5, "count + max_surge");
    assert_eq!(r.fake.peak(), 5);
}

#[tokio::test(start_paused = true)]
async fn max_surge_two_replaces_two_at_a_time() {
    let r = start("count = 4", "max_surge = 2").await;
    let pool = r.watch_pool();
    let began = Instant::now();
    assert!(r.restart().await.ok);
    let took = began.elapsed();
    assert_eq!(pool.most_alive(), 6);
    assert_eq!(pool.fewest_ready(), 4);
    // Two batches, each a boot and a settle: not four.
    assert!(
        took < 2 * (BOOT + Duration::from_millis(300)) + Duration::from_millis(100),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn progress_is_published_step_by_step() {
    let r = start("count = 1", "").await;
    let steps = r.watch_steps();
    // A request in flight for a second, so the drain lasts long enough to be seen: a watch
    // shows the latest state, and a step that takes no time at all is folded into the next.
    let lease = r.lease().await;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(lease);
    });
    assert!(r.restart().await.ok);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let kinds: Vec<&str> = steps.lock().unwrap().iter().map(kind).collect();
    assert_eq!(
        kinds,
        ["starting", "spawning", "settling", "draining", "done"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_blocking_restart_stops_all_then_starts_all() {
    let r = start("count = 3", "").await;
    let pool = r.watch_pool();
    let steps = r.watch_steps();
    let outcome = r
        .restart_later(Some(RestartMode::Blocking))
        .await
        .await
        .unwrap();
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(r.ready_generations(), [2, 2, 2]);
    assert_eq!(pool.most_alive(), 3, "never more than count");
    assert_eq!(pool.fewest_ready(), 0, "requests queue meanwhile");
    let kinds: Vec<&str> = steps.lock().unwrap().iter().map(kind).collect();
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_ignores_sigterm_is_reported_killed() {
    let r = start("count = 1", "").await;
    *r.fake.stop_takes.lock().unwrap() = Duration::from_secs(3);
    let steps = r.watch_steps();
    assert!(r.restart().await.ok);
    let killed = steps.lock().unwrap().iter().any(|w| {
        matches!(
            w,
            WaitingOn::Stopping {
                escalation: Escalation::Killed { .. },
                ..
            }
        )
    });
    assert!(killed, "{:?}", steps.lock().unwrap());
}

// ---- draining -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_the_request_in_flight() {
    let r = start("count = 1", "").await;
    let lease = r.lease().await;
    let outcome = r.restart_later(None).await;
    r.until_the_old_worker_drains().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.phase(), "rolling", "still waiting for the request");
    let began = Instant::now();
    drop(lease);
    assert!(outcome.await.unwrap().ok);
    assert!(began.elapsed() < Duration::from_millis(50));
    assert_eq!(r.ready_generations(), [2]);
}

#[tokio::test(start_paused = true)]
async fn drain_timeout_cuts_a_request_that_never_ends() {
    let r = start("count = 1", "").await;
    let lease = r.lease().await;
    let steps = r.watch_steps();
    *r.fake.stop_takes.lock().unwrap() = Duration::from_millis(100);
    let began = Instant::now();
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "{took:?}"
    );
    assert!(lease.was_cut(), "the cut request is not retried elsewhere");
    let deadline = steps.lock().unwrap().iter().any(|w| {
        matches!(
            w,
            WaitingOn::Stopping {
                escalation: Escalation::DrainDeadline { in_flight: 1, .. },
                ..
            }
        )
    });
    assert!(deadline, "{:?}", steps.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_dies_while_draining_ends_its_drain() {
    let r = start("count = 1", "").await;
    let _lease = r.lease().await;
    let outcome = r.restart_later(None).await;
    r.until_the_old_worker_drains().await;
    let began = Instant::now();
    r.fake.kill(WorkerId(1));
    assert!(outcome.await.unwrap().ok);
    assert!(
        began.elapsed() < Duration::from_millis(50),
        "not drain_timeout"
    );
    assert_eq!(r.ready_generations(), [2]);
}

#[tokio::test(start_paused = true)]
async fn an_old_worker_dying_mid_roll_is_one_more_for_the_roll_to_replace() {
    let r = start("count = 3", "").await;
    r.fake.release(2, Release::Good(Duration::from_secs(1)));
    let pool = r.watch_pool();
    let outcome = r.restart_later(None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A worker the roll has not reached yet.
    r.fake.kill(WorkerId(3));
    let outcome = outcome.await.unwrap();
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(r.ready_generations(), [2, 2, 2]);
    assert!(pool.most_alive() <= 4);
}

// ---- resistance -----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_release_that_exits_at_boot_is_resisted_with_its_output() {
    let r = start("count = 2", "").await;
    r.fake.release(2, bad_boot());
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert_eq!(
        outcome.message,
        "resisting deployment error: worker 3 exited with status 1 before it was ready"
    );
    assert_eq!(outcome.output, ["SyntaxError: invalid syntax"]);
    let resistance = r.resistance().expect("resisting");
    assert_eq!(resistance.generation, Generation(2));
    assert_eq!(resistance.output, ["SyntaxError: invalid syntax"]);
    assert_eq!((r.phase(), r.generation()), ("resisting", 1));
    assert_eq!(
        r.ready_generations(),
        [1, 1],
        "the old workers keep serving"
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_never_ready_is_resisted_at_readiness_timeout() {
    let r = start("count = 2", "").await;
    r.fake.release(2, Release::NeverReady);
    // It ignores SIGTERM: its stop takes stop_timeout (1s), which the outcome does not wait for.
    *r.fake.stop_takes.lock().unwrap() = Duration::from_secs(1);
    let began = Instant::now();
    let outcome = r.restart().await;
    let took = began.elapsed();
    assert!(
        outcome.message.starts_with(
            "resisting deployment error: worker 3 was not ready within 2s (readiness.timeout): "
        ),
        "{outcome:?}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
        "{took:?}"
    );
    assert_eq!(r.ready_generations(), [1, 1]);
    assert!(
        r.workers()
            .iter()
            .any(|w| w.id.0 == 3 && w.state == WorkerState::Stopping),
        "status says the failed worker is stopping: {:?}",
        r.workers()
    );
    r.until("the worker that never became ready is stopped", |r| {
        r.fake.live() == 2
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_release_that_dies_within_the_settle_period_is_resisted() {
    let r = start("count = 2", "").await;
    r.fake.release(
        2,
        Release::DiesAfter {
            boot: BOOT,
            lived: Duration::from_millis(100),
        },
    );
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert!(
        outcome
            .message
            .contains("exited with status 2 0.1s after it became ready")
            && outcome.message.contains("within readiness.settle"),
        "{outcome:?}"
    );
    assert_eq!(r.phase(), "resisting");
    assert_eq!(r.ready_generations(), [1, 1], "no old worker was drained");
    assert_eq!(r.workers().len(), 2);
}

/// A release that dies a while after it starts, past its settle period: the roll stops at the
/// first death instead of spawning worker after worker of it, the reload fails, and the old
/// release takes back the places of the new workers as they die, at once, so the app never
/// runs out of workers.
#[tokio::test(start_paused = true)]
async fn a_release_that_dies_after_its_settle_period_is_resisted_at_once() {
    let r = start("count = 3", "").await;
    r.fake.release(
        2,
        Release::DiesAfter {
            boot: BOOT,
            lived: Duration::from_millis(700),
        },
    );
    let watch = r.watch_pool();
    let began = Instant::now();
    let outcome = r.restart().await;
    assert!(!outcome.ok, "{outcome:?}");
    assert!(
        outcome
            .message
            .contains("exited with status 2 0.7s after it became ready, before the restart ended"),
        "{outcome:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "judged at once: {:?}",
        began.elapsed()
    );
    assert_eq!(r.phase(), "resisting");
    assert!(
        r.fake.starts(2).len() <= 3,
        "no crash loop of the new release"
    );
    r.until("the old release serves on every place", |r| {
        r.ready_generations() == [1, 1, 1]
    })
    .await;
    assert!(watch.fewest_ready() >= 1, "the app ran out of workers");
    assert_eq!(r.phase(), "resisting");
    assert_eq!(
        r.fake.starts(2).len(),
        2,
        "no new-release worker was started again"
    );
}

#[tokio::test(start_paused = true)]
async fn without_resistance_a_death_after_settle_ends_the_roll_as_failed() {
    let r = start("count = 3", "resist_deployment_errors = false").await;
    r.fake.release(
        2,
        Release::DiesAfter {
            boot: BOOT,
            lived: Duration::from_millis(700),
        },
    );
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert!(
        outcome
            .message
            .contains("before the restart ended; the restart stopped there"),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_the_backend_cannot_start_is_resisted() {
    let r = start("count = 2", "").await;
    r.fake.release(2, Release::CannotStart);
    let outcome = r.restart().await;
    assert_eq!(
        outcome.message,
        "resisting deployment error: worker 3 could not start: worker 3: no such program"
    );
    assert_eq!(r.ready_generations(), [1, 1]);
}

#[tokio::test(start_paused = true)]
async fn resistance_refills_capacity_from_the_old_release_at_once() {
    let r = start("count = 2", "").await;
    r.fake.release(2, bad_boot());
    assert!(!r.restart().await.ok);
    // Proven workers (past the crash-loop window) die.
    tokio::time::sleep(CRASH_LOOP_WINDOW).await;
    let began = Instant::now();
    r.fake.kill_generation(1);
    r.until("two old-release workers serve again", |r| {
        r.ready_generations() == [1, 1] && r.ready().iter().all(|w| w.id.0 > 3)
    })
    .await;
    // One boot, no crash-loop backoff.
    assert!(
        began.elapsed() < BOOT + Duration::from_millis(50),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(r.phase(), "resisting");
    assert!(
        r.fake.starts(2).len() == 1,
        "no new-release worker was tried again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_restart_leaves_resistance_and_recovers() {
    let r = start("count = 2", "").await;
    r.fake.release(2, bad_boot());
    assert!(!r.restart().await.ok);
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!((r.phase(), r.generation()), ("steady", 3));
    assert_eq!(r.ready_generations(), [3, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_during_resistance_can_resist_again() {
    let r = start("count = 2", "").await;
    r.fake.release(2, bad_boot());
    assert!(!r.restart().await.ok);
    r.fake.release(3, Release::NeverReady);
    let outcome = r.restart().await;
    assert!(
        outcome.message.contains("was not ready within 2s"),
        "{outcome:?}"
    );
    let resistance = r.resistance().expect("resisting");
    assert_eq!(resistance.generation, Generation(3));
    assert_eq!(r.ready_generations(), [1, 1]);
}

#[tokio::test(start_paused = true)]
async fn resume_leaves_resistance_and_the_old_workers_serve_on() {
    let r = start("count = 2", "").await;
    r.fake.release(2, bad_boot());
    assert!(!r.restart().await.ok);
    assert!(r.resume().await);
    assert_eq!((r.phase(), r.generation()), ("steady", 1));
    assert_eq!(r.ready_generations(), [1, 1]);
    assert!(!r.resume().await, "no longer in resistance");
}

#[tokio::test(start_paused = true)]
async fn resume_outside_resistance_changes_nothing() {
    let r = start("count = 2", "").await;
    assert!(!r.resume().await);
    assert_eq!(r.phase(), "steady");
}

#[tokio::test(start_paused = true)]
async fn without_resistance_a_failed_worker_keeps_its_old_one() {
    let r = start("count = 2", "resist_deployment_errors = false").await;
    r.fake.release(2, bad_boot());
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert!(
        outcome.message.contains("could not be replaced"),
        "{outcome:?}"
    );
    assert_eq!(r.phase(), "steady");
    assert!(!r.ready().is_empty());
}

#[tokio::test(start_paused = true)]
async fn health_says_serving_while_resisting() {
    let r = start("count = 2", "").await;
    r.fake.release(2, bad_boot());
    assert!(!r.restart().await.ok);
    let h = crate::status::Health::new(&r.ctx().state(), &r.workers());
    assert_eq!(
        (
            h.status.as_str(),
            h.phase.as_str(),
            h.resisting,
            h.http_status()
        ),
        ("serving", "resisting", true, 200)
    );
}

// ---- superseding ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_restart_during_a_roll_supersedes_it() {
    let r = start("count = 2", "").await;
    r.fake.release(2, Release::Good(Duration::from_secs(1)));
    let pool = r.watch_pool();
    let first = r.restart_later(None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = r.restart_later(None).await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    // Whoever waited for the superseded restart gets the outcome of the newer release.
    assert!(first.ok && second.ok, "{first:?} {second:?}");
    assert_eq!((first.generation, second.generation), (3, 3));
    assert_eq!(r.ready_generations(), [3, 3]);
    assert!(pool.most_alive() <= 3);
    assert_eq!(pool.fewest_ready(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_superseded_roll_that_resisted_is_not_reported() {
    let r = start("count = 1", "").await;
    r.fake.release(
        2,
        Release::ExitsAtBoot {
            after: Duration::from_secs(1),
            status: 1,
            output: Vec::new(),
        },
    );
    let first = r.restart_later(None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = r.restart_later(None).await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(first.ok && second.ok, "{first:?} {second:?}");
    assert_eq!(r.phase(), "steady");
}

// ---- replacements outside a roll ------------------------------------------------------------

#[test]
fn the_backoff_sequence_doubles_from_half_a_second_to_a_minute() {
    let delays: Vec<u64> = (0..11)
        .map(|failures| Backoff { failures }.delay().as_millis() as u64)
        .collect();
    assert_eq!(
        delays,
        [
            0, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_worker_is_replaced_with_growing_delays() {
    let fake = Fake::default();
    let lived = Duration::from_millis(100);
    fake.release(1, Release::DiesAfter { boot: BOOT, lived });
    let r = start_with(fake, "count = 1", "", false).await;
    r.until("five starts", |r| r.fake.starts(1).len() >= 5)
        .await;
    let starts = r.fake.starts(1);
    let waits: Vec<u64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0] - BOOT - lived).as_millis() as u64)
        .collect();
    assert_eq!(waits, [500, 1000, 2000, 4000]);
    assert_eq!(r.phase(), "steady", "a proven release is never resisted");
    let failure = r.ctx().state().last_spawn_failure.expect("reported");
    assert!(
        failure
            .1
            .contains("exited with status 2 0.3s after it started"),
        "{failure:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_lived_long_is_replaced_at_once() {
    let fake = Fake::default();
    let lived = Duration::from_secs(11);
    fake.release(1, Release::DiesAfter { boot: BOOT, lived });
    let r = start_with(fake, "count = 1", "", false).await;
    r.until("three starts", |r| r.fake.starts(1).len() >= 3)
        .await;
    let starts = r.fake.starts(1);
    for w in starts.windows(2) {
        assert_eq!(w[1] - w[0], BOOT + lived, "no backoff after a long life");
    }
}

#[tokio::test(start_paused = true)]
async fn a_spawn_failure_outside_a_roll_is_retried_not_resisted() {
    let r = start("count = 2", "").await;
    r.fake.release(1, bad_boot());
    r.fake.kill_generation(1);
    r.until("two failed replacements", |r| r.fake.starts(1).len() >= 5)
        .await;
    assert_eq!(r.phase(), "steady");
    let failure = r.ctx().state().last_spawn_failure.expect("reported");
    assert!(
        failure
            .1
            .contains("exited with status 1 before it was ready"),
        "{failure:?}"
    );
    r.fake.release(1, Release::Good(BOOT));
    r.until("capacity is back", |r| r.ready().len() == 2).await;
}

// ---- on-demand workers, idle cleanup, recycling ---------------------------------------------

/// Three ready workers of a `min = 1, max = 3` pool, each spawned on demand and idle now.
async fn three_on_demand() -> Running {
    let r = start(
        "min = 1\nmax = 3\nconcurrency = 1\nidle_timeout = \"2s\"",
        "",
    )
    .await;
    assert_eq!(r.ready().len(), 1);
    let first = r.lease().await;
    let pool = r.ctx().pool.clone();
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire(None).await.unwrap() })
        })
        .collect();
    let mut leases = vec![first];
    for q in queued {
        leases.push(q.await.unwrap());
    }
    assert_eq!(r.ready().len(), 3);
    drop(leases);
    r
}

#[tokio::test(start_paused = true)]
async fn queued_requests_spawn_workers_up_to_max() {
    let r = start("min = 1\nmax = 3\nconcurrency = 1", "").await;
    let pool = r.watch_pool();
    let _held = r.lease().await;
    let p = r.ctx().pool.clone();
    for _ in 0..6 {
        let p = p.clone();
        tokio::spawn(async move {
            let lease = p.acquire(None).await;
            std::future::pending::<()>().await;
            drop(lease);
        });
    }
    r.until("max workers", |r| r.ready().len() == 3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pool.most_alive(), 3, "never beyond max");
    assert_eq!(r.ctx().pool.queue_len(), 4);
}

#[tokio::test(start_paused = true)]
async fn idle_workers_are_stopped_down_to_min() {
    let r = three_on_demand().await;
    r.until("idle cleanup", |r| r.workers().len() == 1).await;
    assert_eq!(r.ready().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_cleanup_is_frozen_while_resisting() {
    let r = three_on_demand().await;
    r.fake.release(2, bad_boot());
    assert!(!r.restart().await.ok);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        r.ready().len(),
        3,
        "no worker is idle-cleaned in resistance"
    );
    assert!(r.resume().await);
    r.until("idle cleanup resumes", |r| r.workers().len() == 1)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_past_max_requests_is_recycled_replacement_first() {
    let r = start("count = 2\nmax_requests = 3", "").await;
    let pool = r.watch_pool();
    for _ in 0..6 {
        drop(r.lease().await);
        // Least recently used first: let the clock tell them apart.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    r.until("both recycled", |r| {
        let w = r.ready();
        w.len() == 2 && w.iter().all(|w| w.id.0 > 2)
    })
    .await;
    assert_eq!(pool.fewest_ready(), 2, "capacity kept while recycling");
    assert_eq!(pool.most_alive(), 3, "one at a time");
    assert_eq!(r.ready_generations(), [1, 1], "from the current release");
}

/// A worker with a request in flight past `max_request_time` is replaced, replacement first
/// (issue 36); one marked stuck at its 504 (the lease gone) is too; a worker whose request
/// has run for less is left alone.
#[tokio::test(start_paused = true)]
async fn a_worker_stuck_on_a_request_is_replaced() {
    let r = start(
        "count = 2\nrequest_timeout = \"10s\"\nmax_request_time = \"5s\"",
        "",
    )
    .await;
    let pool = r.watch_pool();
    let held = r.lease().await;
    let stuck = held.worker;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(r.ready().iter().any(|w| w.id == stuck), "replaced too soon");
    r.until("the stuck worker replaced", |r| {
        let w = r.ready();
        w.len() == 2 && w.iter().all(|w| w.id != stuck)
    })
    .await;
    assert_eq!(pool.fewest_ready(), 2, "capacity kept while replacing");
    drop(held);
    // Marked stuck by the proxy (its 504 came and went): replaced too.
    let lease = r.lease().await;
    let marked = lease.worker;
    lease.stuck();
    drop(lease);
    r.until("the marked worker replaced", |r| {
        let w = r.ready();
        w.len() == 2 && w.iter().all(|w| w.id != marked)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_above_memory_limit_is_recycled() {
    let r = start("count = 1\nmemory_limit = \"512MiB\"", "").await;
    r.ctx().pool.set_usage(WorkerId(1), 0.0, 600 << 20);
    r.until("recycled", |r| {
        r.ready().iter().map(|w| w.id.0).collect::<Vec<_>>() == [2]
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_recycle_whose_replacement_cannot_start_backs_off() {
    let r = start("count = 1\nmemory_limit = \"512MiB\"", "").await;
    r.fake.release(1, bad_boot());
    r.ctx().pool.set_usage(WorkerId(1), 0.0, 600 << 20);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let starts = r.fake.starts(1);
    // The first worker, then replacements at growing intervals: not one every tick (40).
    assert!(starts.len() <= 8, "{} starts in 20 s", starts.len());
    let gaps: Vec<u64> = starts[1..]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "gaps do not grow: {gaps:?}"
    );
    assert_eq!(
        r.ready().iter().map(|w| w.id.0).collect::<Vec<_>>(),
        [1],
        "the old worker serves on"
    );
}

// ---- config reloads -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_restart_applies_the_edited_config() {
    let r = start_with(Fake::default(), "count = 2", "", true).await;
    let path = r.file.as_ref().unwrap().path().to_owned();
    std::fs::write(&path, config_text("count = 3", "")).unwrap();
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    assert!(
        outcome.message.contains("[workers] applied from"),
        "{outcome:?}"
    );
    assert_eq!(r.ready_generations(), [2, 2, 2]);
    assert_eq!(r.ctx().state().config_generation, 2);
}

#[tokio::test(start_paused = true)]
async fn a_broken_config_fails_the_restart_and_changes_nothing() {
    let r = start_with(Fake::default(), "count = 2", "", true).await;
    let path = r.file.as_ref().unwrap().path().to_owned();
    std::fs::write(&path, "name = \"t\"\n[workers]\ncount = \"many\"\n").unwrap();
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert!(
        outcome
            .message
            .starts_with("the config is invalid, nothing was changed:"),
        "{outcome:?}"
    );
    assert_eq!((r.phase(), r.generation()), ("steady", 1));
    assert!(r.fake.starts(2).is_empty());
    assert_eq!(r.ctx().state().config_generation, 1);
}

// ---- stopping -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_restart_after_sigterm_is_refused() {
    let r = start("count = 2", "").await;
    r.handle.begin_stop().await;
    assert_eq!(r.phase(), "stopping");
    let h = crate::status::Health::new(&r.ctx().state(), &r.workers());
    assert_eq!((h.status.as_str(), h.http_status()), ("stopping", 503));
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert_eq!(outcome.message, STOPPING_MESSAGE);
    assert!(r.fake.starts(2).is_empty(), "no roll starts after SIGTERM");
    assert_eq!(
        r.ready_generations(),
        [1, 1],
        "serving goes on until shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn sigterm_during_a_roll_cancels_it_and_shutdown_stops_everything() {
    let r = start("count = 2", "").await;
    r.fake.release(2, Release::Good(Duration::from_secs(5)));
    let outcome = r.restart_later(None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.handle.begin_stop().await;
    let outcome = outcome.await.unwrap();
    assert!(!outcome.ok);
    assert!(
        outcome.message.starts_with(STOPPING_MESSAGE)
            && outcome
                .message
                .contains("the restart to generation 2 was cancelled"),
        "{outcome:?}"
    );
    assert_eq!(r.phase(), "stopping");
    assert_eq!(r.ready_generations(), [1, 1]);
    let began = Instant::now();
    r.handle.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "no wait for the cancelled roll"
    );
    assert_eq!(r.fake.live(), 0, "every worker stopped");
    assert!(r.ctx().tasks.is_empty(), "every supervisor task ended");
}

#[tokio::test(start_paused = true)]
async fn sigterm_ends_a_drain_without_cutting_its_request() {
    let r = start("count = 1", "").await;
    let lease = r.lease().await;
    let outcome = r.restart_later(None).await;
    r.until_the_old_worker_drains().await;
    r.handle.begin_stop().await;
    assert!(!outcome.await.unwrap().ok);
    assert!(
        !lease.was_cut(),
        "the request runs on until the connections drain"
    );
    drop(lease);
    r.handle.shutdown().await;
    assert_eq!(r.fake.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_resisting_stops_every_worker() {
    let r = start("count = 2", "").await;
    r.fake.release(2, bad_boot());
    assert!(!r.restart().await.ok);
    r.handle.shutdown().await;
    assert_eq!(r.fake.live(), 0);
    assert_eq!(r.phase(), "stopping");
}

// ---- a property: random restarts, crashes and boot failures ---------------------------------

#[tokio::test(start_paused = true)]
async fn random_restarts_crashes_and_boot_failures_keep_the_invariants() {
    const COUNT: usize = 3;
    let only: Option<u64> = std::env::var("SEED").ok().and_then(|s| s.parse().ok());
    if only.is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
    for seed in 1..=40u64 {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let r = start(&format!("count = {COUNT}"), "").await;
        // Invariants sampled every millisecond: never more than count + max_surge alive; never
        // fewer than count ready, except after a kill until capacity is back.
        let broken = Arc::new(Mutex::new(None::<String>));
        // The worker killed last, until capacity is back without it.
        let killed = Arc::new(Mutex::new(None::<WorkerId>));
        let monitor = {
            let (ctx, broken, killed) = (r.ctx().clone(), broken.clone(), killed.clone());
            tokio::spawn(async move {
                loop {
                    let w = ctx.pool.workers();
                    let ready = w.iter().filter(|w| w.state == WorkerState::Ready).count();
                    // Capacity is back only with proven workers: not those of a roll in
                    // progress, which may yet fail their settle period or be abandoned.
                    let rolling = ctx.state().phase.rolling().map(|p| p.generation);
                    let proven = w
                        .iter()
                        .filter(|w| w.state == WorkerState::Ready && Some(w.generation) != rolling)
                        .count();
                    let alive = w.iter().filter(|w| w.state.is_alive()).count();
                    {
                        let mut k = killed.lock().unwrap();
                        if proven >= COUNT && k.is_some_and(|v| w.iter().all(|w| w.id != v)) {
                            *k = None;
                        }
                    }
                    let after_kill = killed.lock().unwrap().is_some();
                    {
                        let mut b = broken.lock().unwrap();
                        if b.is_none() && alive > COUNT + 1 {
                            *b = Some(format!("{alive} workers alive: {w:#?}"));
                        }
                        if b.is_none() && ready < COUNT && !after_kill {
                            *b = Some(format!("{ready} ready without a kill: {w:#?}"));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let mut answers = Vec::new();
        let mut ops = Vec::new();
        for _ in 0..8 {
            let op = rng.below(7);
            ops.push(op);
            match op {
                0..=3 => {
                    let boot = Duration::from_millis(50 + rng.below(500));
                    let release = match op {
                        0 => Release::Good(boot),
                        1 => Release::ExitsAtBoot {
                            after: boot,
                            status: 1,
                            output: Vec::new(),
                        },
                        2 => Release::NeverReady,
                        _ => Release::DiesAfter {
                            boot,
                            lived: Duration::from_millis(100),
                        },
                    };
                    r.fake.deploy(release);
                    answers.push(r.restart_later(None).await);
                }
                4 => {
                    let alive: Vec<_> = r.ready();
                    if !alive.is_empty() {
                        let victim = alive[rng.below(alive.len() as u64) as usize].id;
                        *killed.lock().unwrap() = Some(victim);
                        r.fake.kill(victim);
                    }
                }
                5 => {
                    r.resume().await;
                }
                _ => tokio::time::sleep(Duration::from_millis(rng.below(3000))).await,
            }
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        }
        // A good release at the end: every restart was answered, and it converges.
        r.fake.deploy(Release::Good(BOOT));
        let last = r.restart().await;
        let generation = last.generation;
        for a in answers {
            a.await
                .unwrap_or_else(|_| panic!("seed {seed} {ops:?}: a restart got no answer"));
        }
        assert!(last.ok, "seed {seed} {ops:?}: {last:?}");
        r.until("capacity settles", |r| r.ready().len() == COUNT)
            .await;
        monitor.abort();
        if let Some(b) = broken.lock().unwrap().take() {
            panic!("seed {seed} {ops:?}: {b}");
        }
        assert_eq!(r.phase(), "steady", "seed {seed} {ops:?}");
        assert_eq!(r.generation(), generation, "seed {seed} {ops:?}");
        assert_eq!(
            r.ready_generations(),
            vec![generation; COUNT],
            "seed {seed} {ops:?}"
        );
        assert_eq!(r.workers().len(), COUNT, "seed {seed} {ops:?}");
        r.handle.shutdown().await;
        assert_eq!(r.fake.live(), 0, "seed {seed} {ops:?}");
    }
}

// ---- the canary -----------------------------------------------------------------------------

/// Traffic through the pool, as the proxy sends it: a request every 10 ms, whose outcome
/// `answer` decides from the generation that served it and the time since the traffic began.
fn traffic(
    r: &Running,
    answer: impl Fn(u64, Duration) -> crate::canary::Outcome + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let pool = r.ctx().pool.clone();
    tokio::spawn(async move {
        let began = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let Ok(lease) = pool.acquire(None).await else {
                return;
            };
            let Some(generation) = pool.get(lease.worker).map(|w| w.generation.0) else {
                continue;
            };
            lease.outcomes.record(answer(generation, began.elapsed()));
        }
    })
}

const CANARY: &str = "[canary]\nworkers = 1\nduration = \"30s\"\nmin_requests = 200\n";

#[tokio::test(start_paused = true)]
async fn a_canary_that_fails_more_than_the_old_generation_is_rejected_at_once() {
    use crate::canary::Outcome::Answered;
    let r = start("count = 3", CANARY).await;
    // Generation 2 answers 500 to every fourth of its requests, generation 1 never.
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = traffic(&r, move |g, _| {
        if g != 2 {
            return Answered(200);
        }
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Answered(if i.is_multiple_of(4) { 500 } else { 200 })
    });
    let steps = r.watch_steps();
    let began = Instant::now();
    let outcome = r.restart().await;
    assert!(!outcome.ok, "{outcome:?}");
    assert!(
        outcome.message.contains("generation 2 failed") && outcome.message.contains("canary judge"),
        "{outcome:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "judged on the evidence, not at the window's end: {:?}",
        began.elapsed()
    );
    assert!(
        steps.lock().unwrap().iter().any(|s| kind(s) == "canary"),
        "the canary showed in the progress"
    );
    assert_eq!(r.phase(), "resisting");
    r.until("the canary is gone and the old release serves", |r| {
        r.workers().iter().all(|w| w.generation.0 == 1) && r.ready_generations() == [1, 1, 1]
    })
    .await;
    assert_eq!(
        r.fake.starts(2).len(),
        1,
        "one canary, no more of the release"
    );
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn a_canary_as_good_as_the_old_generation_rolls_on_after_its_window() {
    use crate::canary::Outcome::Answered;
    let r = start("count = 3", CANARY).await;
    // Both fail one of every hundred of their own requests.
    let n: Arc<[std::sync::atomic::AtomicU64; 3]> = Arc::default();
    let load = traffic(&r, move |g, _| {
        let i = n[g.min(2) as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Answered(if i % 100 == 7 { 503 } else { 200 })
    });
    let began = Instant::now();
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    assert!(
        began.elapsed() >= Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(r.ready_generations(), [2, 2, 2]);
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn a_generation_that_turns_worse_after_its_canary_is_rejected_before_the_roll_ends() {
    use crate::canary::Outcome::{Answered, NoAnswer};
    // A short canary, then a roll slow enough (a long settle) for the judge to look again.
    let r = start(
        "count = 3",
        "[canary]\nworkers = 1\nduration = \"5s\"\nmin_requests = 100\n",
    )
    .await;
    let cfg = {
        let mut c = (*r.ctx().config()).clone();
        c.readiness.settle = crate::config::Duration::from_secs(5);
        Arc::new(c)
    };
    *r.ctx().config.lock().unwrap() = cfg;
    // Generation 2 is fine for its first 12 s of traffic, then drops every other connection.
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = traffic(&r, move |g, since| {
        if g != 2 {
            return Answered(200);
        }
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if since > Duration::from_secs(12) && i.is_multiple_of(2) {
            NoAnswer
        } else {
            Answered(200)
        }
    });
    let outcome = r.restart().await;
    assert!(!outcome.ok, "{outcome:?}");
    assert!(outcome.message.contains("canary judge"), "{outcome:?}");
    r.until("the old release is back on every place", |r| {
        r.workers().iter().all(|w| w.generation.0 == 1) && r.ready_generations() == [1, 1, 1]
    })
    .await;
    load.abort();
}

// ---- the watch and rollbacks ----------------------------------------------------------------

const WATCHED: &str =
    "[canary]\nworkers = 1\nduration = \"2s\"\nmin_requests = 20\nwatch = \"60s\"\n";

#[tokio::test(start_paused = true)]
async fn a_generation_that_turns_worse_during_its_watch_is_rolled_back_by_itself() {
    use crate::canary::Outcome::Answered;
    let r = start("count = 3", WATCHED).await;
    // Generation 2 turns bad 20 s after the traffic began, long after its roll.
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = traffic(&r, move |g, since| {
        if g != 2 || since < Duration::from_secs(20) {
            return Answered(200);
        }
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Answered(if i.is_multiple_of(3) { 500 } else { 200 })
    });
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    assert!(r.ctx().state().watch.is_some(), "generation 2 is watched");
    r.until("rolled back to the first release, as generation 3", |r| {
        r.ready_generations() == [3, 3, 3] && r.phase() == "resisting"
    })
    .await;
    let reason = r.resistance().unwrap().reason;
    assert!(
        reason.contains("since its roll ended")
            && reason.contains("rolled back to the release of generation 1"),
        "{reason}"
    );
    assert_eq!(r.generation(), 3);
    assert!(r.ctx().state().watch.is_none());
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn a_death_during_the_watch_rolls_back_at_once() {
    let r = start("count = 2", WATCHED).await;
    // Generation 2 dies 6 s after it starts: after its 2 s canary and its roll.
    r.fake.release(
        2,
        Release::DiesAfter {
            boot: BOOT,
            lived: Duration::from_secs(6),
        },
    );
    let outcome = r.restart().await;
    assert!(outcome.ok, "the roll itself went through: {outcome:?}");
    let rolled = Instant::now();
    r.until("rolled back after the first death", |r| {
        r.ready_generations() == [3, 3]
    })
    .await;
    assert!(
        rolled.elapsed() < Duration::from_secs(10),
        "{:?}",
        rolled.elapsed()
    );
    let reason = r.resistance().unwrap().reason;
    assert!(
        reason.contains("after its roll ended (canary.watch)")
            && reason.contains("rolled back to the release of generation 1"),
        "{reason}"
    );
    assert_eq!(r.fake.starts(3).len(), 2, "the old release, once per place");
}

#[tokio::test(start_paused = true)]
async fn baton_rollback_brings_back_the_previous_release_and_not_further() {
    let r = start("count = 2", "").await;
    assert!(r.restart().await.ok);
    assert_eq!(r.ready_generations(), [2, 2]);
    let back = r.rollback().await;
    assert!(back.ok, "{back:?}");
    assert!(
        back.message.contains(
            "rolled back from generation 2 to the release of generation 1 as generation 3"
        ),
        "{back:?}"
    );
    assert_eq!(r.ready_generations(), [3, 3]);
    assert_eq!(r.phase(), "steady");
    // Generation 3 is generation 1's release: there is nothing before it.
    let again = r.rollback().await;
    assert!(!again.ok);
    assert!(
        again
            .message
            .contains("no earlier generation to roll back to"),
        "{again:?}"
    );
    // A restart after a rollback, then a rollback, goes back to generation 3.
    assert!(r.restart().await.ok);
    let back = r.rollback().await;
    assert!(back.ok, "{back:?}");
    assert!(
        back.message.contains("to the release of generation 3"),
        "{back:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_canary_whose_drops_come_from_its_death_is_refused_for_the_death() {
    use crate::canary::Outcome::{Answered, NoAnswer};
    let r = start("count = 3", CANARY).await;
    // Generation 2 resets every connection, then dies: its drops are seen before its death,
    // and the death is what the operator is told.
    r.fake.release(
        2,
        Release::DiesAfter {
            boot: BOOT,
            lived: Duration::from_millis(1200),
        },
    );
    let load = traffic(&r, |g, _| if g == 2 { NoAnswer } else { Answered(200) });
    let outcome = r.restart().await;
    assert!(!outcome.ok, "{outcome:?}");
    assert!(
        outcome.message.contains("exited with status 2")
            && outcome.message.contains("after it became ready"),
        "{outcome:?}"
    );
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn a_slow_booting_release_is_judged_for_the_whole_canary_duration() {
    let r = start("count = 1", CANARY).await;
    // Boots for 1.5 s (readiness.timeout is 2 s here), then lives on: the canary's 30 s
    // count from its first request.
    r.fake.release(
        2,
        Release::DiesAfter {
            boot: Duration::from_millis(1500),
            lived: Duration::from_secs(3600),
        },
    );
    let began = Instant::now();
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    assert!(
        began.elapsed() >= Duration::from_millis(31_500),
        "the canary served for its whole duration after its boot: {:?}",
        began.elapsed()
    );
}

/// A change to any one part of the config is either applied by a reload or kept and told,
/// never dropped: the reload's one table ([`SECTIONS`]) covers every field of `Config`.
#[test]
fn every_part_of_the_config_is_applied_or_kept_by_a_reload() {
    // Fails to build when `Config` gains a field: give it its place in `SECTIONS`, then a
    // case below.
    let Config {
        name: _,
        listen: _,
        app: _,
        workers: _,
        readiness: _,
        restart: _,
        canary: _,
        spawner: _,
        control: _,
        metrics: _,
        tls: _,
        static_files: _,
        log: _,
    } = Config::parse(&config_text("", ""), std::path::Path::new("t.toml")).unwrap();
    let base = config_text("count = 2", "");
    let tls = "[tls]\naddress = \"127.0.0.1:8443\"\ncertificates = [{ cert = \"/a.pem\", key = \"/a.key\" }]\n";
    let cases: &[(&str, &str, &str)] = &[
        ("name = \"t\"", "name = \"u\"", "name"),
        (
            "[app]",
            "[listen]\naddress = \"127.0.0.1:9\"\n[app]",
            "[listen]",
        ),
        (
            "[app]",
            "[control]\nsocket = \"/run/x.sock\"\n[app]",
            "[control]",
        ),
        (
            "[app]",
            "[spawner]\nbackend = \"process\"\n[app]",
            "[spawner]",
        ),
        (
            "[app]",
            "[metrics]\naddress = \"127.0.0.1:9090\"\n[app]",
            "[metrics]",
        ),
        ("[app]", "[static]\nmax_open_files = 10\n[app]", "[static]"),
        ("[app]", "[log]\nqueue = 100\n[app]", "[log]"),
        ("command = [\"true\"]", "command = [\"false\"]", "[app]"),
        ("count = 2", "count = 3", "[workers]"),
        ("timeout = \"2s\"", "timeout = \"3s\"", "[readiness]"),
        (
            "stop_timeout = \"1s\"",
            "stop_timeout = \"2s\"",
            "[restart]",
        ),
        ("workers = 0", "workers = 1", "[canary]"),
    ];
    let parse = |text: &str| {
        Config::parse(text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut seen = Vec::new();
    for (from, to, section) in cases {
        let old = parse(&base);
        let edited = base.replacen(from, to, 1);
        assert_ne!(edited, base, "{section}");
        let mut new = parse(&edited);
        assert_ne!(old, new, "{section}");
        let (applied, kept) = sort_changes(&old, &mut new, false);
        if kept.is_empty() {
            assert_eq!(applied, [*section]);
        } else {
            assert_eq!((&applied[..], &kept[..]), (&[][..], &[*section][..]));
            assert_eq!(old, new, "{section} is kept whole");
        }
        seen.push(*section);
    }
    // [tls]: its certificates are applied, its address only by a new baton.
    let old = parse(&format!("{base}{tls}"));
    let mut new = parse(&format!("{base}{}", tls.replace("/a.", "/b.")));
    assert_eq!(sort_changes(&old, &mut new, true), (vec!["[tls]"], vec![]));
    let mut new = parse(&format!("{base}{}", tls.replace("8443", "9443")));
    assert_eq!(
        sort_changes(&old, &mut new, true),
        (vec![], vec![TLS_FIXED])
    );
    assert_eq!(old, new);
    // A first certificate needs the HTTPS listener a running baton does not have.
    let mut new = parse(&format!("{base}{tls}"));
    let (applied, kept) = sort_changes(&parse(&base), &mut new, false);
    assert_eq!((applied, kept), (vec!["[tls]"], vec![TLS_FIXED]));
    seen.extend(["[tls]", TLS_FIXED]);
    let mut all: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
    all.sort_unstable();
    seen.sort_unstable();
    assert_eq!(all, seen, "a case for every part");
}
