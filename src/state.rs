//! What the supervisor publishes: the restart state that status, `STATUS=`, metrics and
//! `restart --wait` read. A leaf module: the supervisor (`restart`) writes these values, the
//! readers (`status`, `metrics`, `control`) only import them, so no reader imports the
//! supervisor for its types.

use crate::canary::{Percent, Tally, thousands};
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
    /// A rollback: the generation whose release this roll brings back.
    pub rollback_to: Option<Generation>,
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
    /// The first new workers serving beside the old ones while the judge compares them.
    Canary(CanaryProgress),
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

/// A canary as it runs: the figures since it began, and the time left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryProgress {
    pub generation: Generation,
    pub workers: usize,
    pub new: Tally,
    pub old: Tally,
    pub left: Duration,
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
            WaitingOn::Canary(c) => write!(
                f,
                "canary: generation {}, {} worker{}, {} request{}, errors {} vs {}, {} left",
                c.generation,
                c.workers,
                plural(c.workers),
                thousands(c.new.requests),
                if c.new.requests == 1 { "" } else { "s" },
                Percent(c.new.rate()),
                Percent(c.old.rate()),
                humantime::format_duration(Duration::from_secs(c.left.as_secs()))
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
            WaitingOn::StoppingAll(n) => write!(f, "stopping {n} worker{}", plural(*n)),
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

/// Where the supervisor is. Exactly one at a time; only the supervisor task changes it, through
/// [`RestartState::enter`], which refuses the moves that make no sense.
///
/// ```text
///  Starting ──► Steady ◄──────────────┐
///     │           │ ▲                 │ resume
///     │  restart  ▼ │ done / failed   │
///     └──────► Rolling ──────────► Resisting
///                 ▲     new worker        │
///                 └──── failed ───────────┘ restart
///  any phase ──► Stopping (SIGTERM; final)
/// ```
#[derive(Clone, Debug, Default)]
pub enum Phase {
    /// The first generation (or workers adopted from a previous baton) coming up; READY=1 is
    /// sent when it leaves this phase.
    #[default]
    Starting,
    /// Serving; dead workers are replaced, on-demand workers spawned and idle ones stopped.
    Steady,
    /// A restart replaces the workers.
    Rolling(RollProgress),
    /// A new release failed during a roll: the old workers keep serving, no new generation is
    /// spawned and no worker is idle-cleaned until a restart or `baton resume`.
    Resisting(Resistance),
    /// SIGTERM was heard: requests drain, no restart starts, the workers stop. Final.
    Stopping,
}

impl Phase {
    /// The phase's name, as `/health` and metrics show it.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Steady => "steady",
            Phase::Rolling(_) => "rolling",
            Phase::Resisting(_) => "resisting",
            Phase::Stopping => "stopping",
        }
    }

    pub fn rolling(&self) -> Option<&RollProgress> {
        match self {
            Phase::Rolling(p) => Some(p),
            _ => None,
        }
    }

    pub fn resisting(&self) -> Option<&Resistance> {
        match self {
            Phase::Resisting(r) => Some(r),
            _ => None,
        }
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self, Phase::Stopping)
    }
}

/// A move between phases that the state machine does not allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the supervisor cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: &'static str,
    pub to: &'static str,
}

/// What the supervisor publishes (through a `watch` channel: status, `STATUS=`, health,
/// metrics and `restart --wait` subscribe to it); written only by the supervisor and its roll.
#[derive(Clone, Debug, Default)]
pub struct RestartState {
    /// The generation new replacement workers come from (the last one rolled out).
    pub generation: Generation,
    pub phase: Phase,
    /// The last spawn failure outside a roll, retried with backoff.
    pub last_spawn_failure: Option<(SystemTime, String)>,
    /// How many configs have been in force: 1 at start, one more per restart that re-read an
    /// edited file.
    pub config_generation: u64,
    /// The generation last rolled out, while it is still watched (`canary.watch`).
    pub watch: Option<WatchProgress>,
}

/// A generation watched after its roll: its figures since the roll ended, and the old
/// generation's during the roll, which they are judged against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchProgress {
    pub generation: Generation,
    pub until: SystemTime,
    pub new: Tally,
    pub old: Tally,
}

impl std::fmt::Display for WatchProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {} watched until {}: {} request{}, errors {} vs {} during the roll",
            self.generation,
            clock(self.until),
            thousands(self.new.requests),
            if self.new.requests == 1 { "" } else { "s" },
            Percent(self.new.rate()),
            Percent(self.old.rate())
        )
    }
}

impl RestartState {
    /// Move to `to` if the state machine allows it from the current phase. A roll's progress
    /// may be replaced (same phase, new step); nothing leaves `Stopping`.
    pub fn enter(&mut self, to: Phase) -> Result<(), InvalidTransition> {
        use Phase::*;
        let allowed = match (&self.phase, &to) {
            (Stopping, _) => false,
            (_, Stopping) => true,
            (Starting, Steady) => true,
            (Starting | Steady | Resisting(_) | Rolling(_), Rolling(_)) => true,
            (Rolling(_), Steady | Resisting(_)) => true,
            (Resisting(_), Steady) => true,
            _ => false,
        };
        if !allowed {
            return Err(InvalidTransition {
                from: self.phase.name(),
                to: to.name(),
            });
        }
        self.phase = to;
        Ok(())
    }

    /// The roll in progress, to update its step.
    pub fn rolling_mut(&mut self) -> Option<&mut RollProgress> {
        match &mut self.phase {
            Phase::Rolling(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roll() -> Phase {
        Phase::Rolling(RollProgress {
            mode: RestartMode::Rolling,
            generation: Generation(2),
            rollback_to: None,
            done: 0,
            total: 1,
            waiting_on: WaitingOn::Starting,
        })
    }

    fn resisting() -> Phase {
        Phase::Resisting(Resistance {
            since: SystemTime::UNIX_EPOCH,
            reason: "worker 3 exited with status 1 before it was ready".into(),
            generation: Generation(2),
            output: Vec::new(),
        })
    }

    fn at(phase: Phase) -> RestartState {
        RestartState {
            phase,
            ..RestartState::default()
        }
    }

    #[test]
    fn the_allowed_moves() {
        for (from, to) in [
            (Phase::Starting, Phase::Steady),
            (Phase::Starting, roll()),
            (Phase::Steady, roll()),
            (roll(), roll()),
            (roll(), Phase::Steady),
            (roll(), resisting()),
            (resisting(), roll()),
            (resisting(), Phase::Steady),
            (Phase::Starting, Phase::Stopping),
            (resisting(), Phase::Stopping),
            (roll(), Phase::Stopping),
        ] {
            let name = (from.name(), to.name());
            assert_eq!(at(from).enter(to), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn the_refused_moves() {
        for (from, to) in [
            (Phase::Steady, resisting()),
            (Phase::Starting, resisting()),
            (Phase::Steady, Phase::Starting),
            (resisting(), Phase::Starting),
            (Phase::Stopping, roll()),
            (Phase::Stopping, Phase::Steady),
            (Phase::Stopping, Phase::Stopping),
        ] {
            let mut s = at(from);
            let before = s.phase.name();
            assert!(s.enter(to).is_err());
            assert_eq!(s.phase.name(), before, "a refused move changes nothing");
        }
    }
}
