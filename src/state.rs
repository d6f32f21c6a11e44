//! What the supervisor publishes: the restart state that status, `STATUS=`, metrics and
//! `restart --wait` read. A leaf module: the supervisor (`restart`) writes these values, the
//! readers (`status`, `metrics`, `control`) only import them, so no reader imports the
//! supervisor for its types.

use crate::spawn::{Generation, WorkerId};
use std::time::{Duration, SystemTime};

/// How a restart replaces the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartMode {
    Rolling,
    Blocking,
}

impl RestartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartMode::Rolling => "rolling",
            RestartMode::Blocking => "blocking",
        }
    }
}

/// A roll in progress, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollProgress {
    pub mode: RestartMode,
    pub generation: Generation,
    pub done: usize,
    pub total: usize,
    pub waiting_on: WaitingOn,
}

/// What a roll waits on, as status and `restart --wait` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitingOn {
    Starting,
    /// New workers being started, until ready.
    Spawning {
        count: usize,
        generation: Generation,
    },
    /// Ready new workers proving themselves for `readiness.settle`.
    Settling {
        workers: Vec<WorkerId>,
        settle: Duration,
    },
    /// An old worker finishing its requests (at most `drain_timeout`).
    Draining(WorkerId),
    /// An old worker being stopped, and how far the stop has escalated.
    Stopping {
        worker: WorkerId,
        escalation: Escalation,
    },
    /// Old workers stopped all at once (a blocking restart).
    StoppingAll(usize),
    Done,
}

/// How hard baton had to push a worker out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Escalation {
    /// `drain_timeout` passed with requests in flight: they were cut, SIGTERM sent.
    DrainDeadline {
        at: SystemTime,
        in_flight: usize,
        drain_timeout: Duration,
    },
    /// It did not exit within `stop_timeout` of SIGTERM: SIGKILL sent.
    Killed {
        at: SystemTime,
        stop_timeout: Duration,
    },
}

impl std::fmt::Display for WaitingOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        match self {
            WaitingOn::Starting => f.write_str("starting"),
            WaitingOn::Spawning { count, generation } => write!(
                f,
                "spawning {count} worker{} of generation {generation}",
                plural(*count)
            ),
            WaitingOn::Settling { workers, settle } => write!(
                f,
                "settling worker{} {} ({} readiness.settle)",
                plural(workers.len()),
                workers
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                humantime::format_duration(*settle)
            ),
            WaitingOn::Draining(w) => write!(f, "draining worker {w}"),
            WaitingOn::Stopping { worker, escalation } => match escalation {
                Escalation::DrainDeadline {
                    at,
                    in_flight,
                    drain_timeout,
                } => write!(
                    f,
                    "stopping worker {worker}: drain_timeout ({}) passed with {in_flight} request{} in flight, cut; SIGTERM sent at {}",
                    humantime::format_duration(*drain_timeout),
                    plural(*in_flight),
                    clock(*at)
                ),
                Escalation::Killed { at, stop_timeout } => write!(
                    f,
                    "stopping worker {worker}: still running {} after SIGTERM (stop_timeout); SIGKILL sent at {}",
                    humantime::format_duration(*stop_timeout),
                    clock(*at)
                ),
            },
            WaitingOn::StoppingAll(n) => write!(f, "stopping {n} workers"),
            WaitingOn::Done => f.write_str("done"),
        }
    }
}

/// "10:02:03" (UTC) for progress lines; the journal has the full time.
fn clock(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..19).unwrap_or(&s).to_owned()
}

/// Resistance mode, as status shows it.
#[derive(Clone, Debug)]
pub struct Resistance {
    pub since: SystemTime,
    pub reason: String,
    pub generation: Generation,
    pub output: Vec<String>,
}

/// What the supervisor publishes for status; written only by the supervisor and its roll.
#[derive(Clone, Debug, Default)]
pub struct RestartState {
    /// The generation new replacement workers come from (the last one rolled out).
    pub generation: Generation,
    pub rolling: Option<RollProgress>,
    pub resisting: Option<Resistance>,
    /// The last spawn failure outside a roll, retried with backoff.
    pub last_spawn_failure: Option<(SystemTime, String)>,
    pub started: bool,
    /// How many configs have been in force: 1 at start, one more per restart that re-read an
    /// edited file.
    pub config_generation: u64,
}
