//! The supervisor against an in-memory backend: workers are tasks of the test that answer HTTP
//! on their port (readiness is real), die when the test says so, and behave per generation as
//! a release would. Each scenario runs in well under a second.

use super::*;
use crate::spawn::{ExitReason, OutputTail, SpawnError, StartedWorker, WorkerSpec};
use async_trait::async_trait;
use std::collections::HashMap;
use tokio::sync::watch;

/// How the workers of one generation behave.
#[derive(Clone, Copy, Debug)]
enum Release {
    Good,
    /// Exit with status 1 before listening.
    ExitsAtBoot,
    /// Answer, then exit with status 2 this long after starting to listen.
    DiesAfter(Duration),
}

/// A worker the fake started: its id, generation, and the switch that ends it.
type FakeWorker = (WorkerId, u64, watch::Sender<Option<ExitReason>>);

#[derive(Default)]
struct Fake {
    releases: Mutex<HashMap<u64, Release>>,
    /// Every worker started, to kill or inspect.
    started: Mutex<Vec<FakeWorker>>,
}

impl Fake {
    fn release(&self, generation: u64, r: Release) {
        self.releases.lock().unwrap().insert(generation, r);
    }

    /// Kill the workers of `generation` (as SIGKILL would).
    fn kill_generation(&self, generation: u64) {
        for (_, g, tx) in self.started.lock().unwrap().iter() {
            if *g == generation {
                let _ = tx.send(Some(ExitReason::Signaled(9)));
            }
        }
    }
}

#[async_trait]
impl Spawner for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &WorkerSpec) -> Result<StartedWorker, SpawnError> {
        let release = self
            .releases
            .lock()
            .unwrap()
            .get(&spec.generation.0)
            .copied()
            .unwrap_or(Release::Good);
        let (tx, rx) = watch::channel(None);
        self.started
            .lock()
            .unwrap()
            .push((spec.id, spec.generation.0, tx.clone()));
        let port = spec.port;
        let mut gone = rx.clone();
        tokio::spawn(async move {
            if let Release::ExitsAtBoot = release {
                let _ = tx.send(Some(ExitReason::Exited(1)));
                return;
            }
            let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
                let _ = tx.send(Some(ExitReason::Exited(98)));
                return;
            };
            let die = async {
                match release {
                    Release::DiesAfter(d) => tokio::time::sleep(d).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::pin!(die);
            loop {
                tokio::select! {
                    _ = &mut die => {
                        let _ = tx.send(Some(ExitReason::Exited(2)));
                        return;
                    }
                    // Killed by the test or stopped by the supervisor: stop listening.
                    _ = gone.wait_for(|e| e.is_some()) => return,
                    accepted = listener.accept() => {
                        if let Ok((mut s, _)) = accepted {
                            tokio::spawn(async move {
                                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                let mut buf = [0u8; 1024];
                                let _ = s.read(&mut buf).await;
                                let _ = s
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                                    .await;
                            });
                        }
                    }
                }
            }
        });
        Ok(StartedWorker {
            pid: None,
            unit: None,
            exited: rx,
            output: OutputTail::default(),
        })
    }

    async fn stop(&self, id: WorkerId, _worker: &StartedWorker, _timeout: Duration) {
        for (w, _, tx) in self.started.lock().unwrap().iter() {
            if *w == id && tx.borrow().is_none() {
                let _ = tx.send(Some(ExitReason::Signaled(15)));
            }
        }
    }

    fn processes(&self, _worker: &StartedWorker) -> Vec<u32> {
        // The workers' listeners are this process's.
        vec![std::process::id()]
    }
}

struct Running {
    handle: Handle,
    fake: Arc<Fake>,
}

async fn start(workers: usize, extra: &str) -> Running {
    let text = format!(
        "name = \"t\"\n[app]\ncommand = [\"true\"]\n[workers]\ncount = {workers}\nconcurrency = 0\n[readiness]\ntimeout = \"2s\"\nsettle = \"300ms\"\n[restart]\nstop_timeout = \"1s\"\n{extra}"
    );
    let config = Arc::new(Config::parse(&text, std::path::Path::new("t.toml")).unwrap());
    let pool = Pool::new(crate::pool::Limits {
        concurrency: 0,
        max_queue: 10,
    });
    let fake = Arc::new(Fake::default());
    let (sup, handle) = Supervisor::new(
        config,
        None,
        pool,
        fake.clone(),
        Arc::new(Notifier::default()),
        Arc::new(crate::metrics::Metrics::default()),
    );
    tokio::spawn(sup.run());
    let r = Running { handle, fake };
    r.until(|w| w.iter().filter(|w| w.state == WorkerState::Ready).count() == workers)
        .await;
    r
}

impl Running {
    async fn restart(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        assert!(
            self.handle
                .send(Command::Restart {
                    mode: None,
                    reply: Some(tx),
                })
                .await
        );
        rx.await.unwrap()
    }

    fn workers(&self) -> Vec<crate::pool::WorkerView> {
        self.handle.context.pool.workers()
    }

    async fn until(&self, f: impl Fn(&[crate::pool::WorkerView]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f(&self.workers()) {
            assert!(
                Instant::now() < deadline,
                "not reached: {:#?}",
                self.workers()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn a_roll_replaces_every_worker() {
    let r = start(3, "").await;
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    let w = r.workers();
    assert_eq!(w.len(), 3);
    assert!(
        w.iter()
            .all(|w| w.generation == Generation(2) && w.state == WorkerState::Ready)
    );
}

#[tokio::test]
async fn a_release_that_dies_within_the_settle_period_is_resisted() {
    let r = start(2, "").await;
    r.fake
        .release(2, Release::DiesAfter(Duration::from_millis(100)));
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert!(
        outcome.message.contains("exited with status 2")
            && outcome.message.contains("after it became ready"),
        "{outcome:?}"
    );
    let state = r.handle.context.state();
    assert!(state.resisting.is_some());
    assert_eq!(state.generation, Generation(1));
    // No old worker was drained for a new one that had not proven itself.
    let w = r.workers();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w.iter()
            .all(|w| w.generation == Generation(1) && w.state == WorkerState::Ready)
    );
}

#[tokio::test]
async fn a_release_that_exits_at_boot_is_resisted_and_a_good_one_recovers() {
    let r = start(2, "").await;
    r.fake.release(2, Release::ExitsAtBoot);
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert!(
        outcome
            .message
            .contains("exited with status 1 before it was ready"),
        "{outcome:?}"
    );
    let outcome = r.restart().await;
    assert!(outcome.ok, "{outcome:?}");
    assert!(r.handle.context.state().resisting.is_none());
    assert!(r.workers().iter().all(|w| w.generation == Generation(3)));
}

#[tokio::test]
async fn resistance_refills_capacity_from_the_old_release_at_once() {
    let r = start(2, "").await;
    r.fake.release(2, Release::ExitsAtBoot);
    assert!(!r.restart().await.ok);
    // Every old worker dies: replaced from generation 1, without the crash-loop backoff.
    let started = Instant::now();
    r.fake.kill_generation(1);
    r.until(|w| {
        w.iter()
            .filter(|w| w.state == WorkerState::Ready && w.generation == Generation(1))
            .count()
            == 2
            && w.iter().all(|w| w.id.0 > 2)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        r.handle.context.state().resisting.is_some(),
        "still resisting"
    );
}

#[tokio::test]
async fn without_resistance_a_failed_worker_keeps_its_old_one() {
    let r = start(2, "resist_deployment_errors = false\n").await;
    r.fake.release(2, Release::ExitsAtBoot);
    let outcome = r.restart().await;
    assert!(!outcome.ok);
    assert!(
        outcome.message.contains("could not be replaced"),
        "{outcome:?}"
    );
    assert!(r.handle.context.state().resisting.is_none());
    let ready = r
        .workers()
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .count();
    assert!(ready >= 1, "{:#?}", r.workers());
}

#[tokio::test]
async fn progress_is_published_step_by_step() {
    let r = start(1, "").await;
    let mut steps = r.handle.context.subscribe_progress();
    let outcome = r.restart().await;
    assert!(outcome.ok);
    let mut seen = Vec::new();
    while let Ok(p) = steps.try_recv() {
        seen.push(p.waiting_on);
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|w| match w {
            WaitingOn::Starting => "starting",
            WaitingOn::Spawning { .. } => "spawning",
            WaitingOn::Settling { .. } => "settling",
            WaitingOn::Draining(_) => "draining",
            WaitingOn::Stopping { .. } => "stopping",
            WaitingOn::StoppingAll(_) => "stopping all",
            WaitingOn::Done => "done",
        })
        .collect();
    let mut steps: Vec<&str> = Vec::new();
    for k in kinds {
        if steps.last() != Some(&k) {
            steps.push(k);
        }
    }
    assert_eq!(
        steps,
        ["starting", "spawning", "settling", "draining", "done"],
        "{seen:?}"
    );
}
