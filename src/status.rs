//! What `baton status` shows: the JSON object of docs/status.md, the passenger-status-like table, and
//! the one-line STATUS= for systemd.

use crate::pool::{WorkerState, WorkerView};
use crate::state::{RestartState, RollProgress, WaitingOn};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::SystemTime;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub app: String,
    pub generation: u64,
    pub backend: String,
    /// Workers the pool keeps.
    pub target: usize,
    pub rolling_restart: Option<RollingJson>,
    pub resisting_deployment_error: Option<ResistingJson>,
    pub last_spawn_failure: Option<String>,
    pub queue: usize,
    pub workers: Vec<WorkerJson>,
    /// The one line that systemd's STATUS= also shows.
    pub status_line: String,
    /// 1 at start, one more for every restart that applied an edited config file.
    #[serde(default)]
    pub config_generation: u64,
    /// The generation last rolled out, while `canary.watch` runs.
    #[serde(default)]
    pub watch: Option<WatchJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WatchJson {
    pub generation: u64,
    pub until: String,
    pub requests: u64,
    pub errors: u64,
    /// The old generation's figures during the roll, the baseline.
    pub baseline_requests: u64,
    pub baseline_errors: u64,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RollingJson {
    pub mode: String,
    pub generation: u64,
    /// A rollback: the generation whose release it brings back.
    #[serde(default)]
    pub rollback_to: Option<u64>,
    pub done: usize,
    pub total: usize,
    pub waiting_on: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResistingJson {
    pub since: String,
    pub reason: String,
    pub generation: u64,
    #[serde(default)]
    pub output: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerJson {
    pub id: u64,
    pub pid: Option<u32>,
    pub generation: u64,
    pub state: String,
    pub sessions: usize,
    pub processed: u64,
    pub uptime_s: u64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub last_used_s: Option<u64>,
    pub unit: Option<String>,
    pub address: String,
    /// Age of its oldest request in flight.
    #[serde(default)]
    pub oldest_request_s: Option<u64>,
    /// It left a request unanswered past `max_request_time`: it is being replaced.
    #[serde(default)]
    pub stuck: bool,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Snapshot {
    pub fn new(
        app: &str,
        backend: &str,
        target: usize,
        state: &RestartState,
        workers: &[WorkerView],
        queue: usize,
    ) -> Snapshot {
        Snapshot {
            app: app.to_owned(),
            generation: state.generation.0,
            backend: backend.to_owned(),
            target,
            rolling_restart: state.phase.rolling().map(|r| RollingJson::new(r, workers)),
            resisting_deployment_error: state.phase.resisting().map(|r| ResistingJson {
                since: rfc3339(r.since),
                reason: r.reason.clone(),
                generation: r.generation.0,
                output: r.output.clone(),
            }),
            last_spawn_failure: state
                .last_spawn_failure
                .as_ref()
                .map(|(t, m)| format!("{} at {}", m, rfc3339(*t))),
            queue,
            config_generation: state.config_generation,
            watch: state.watch.as_ref().map(|w| WatchJson {
                generation: w.generation.0,
                until: rfc3339(w.until),
                requests: w.new.requests,
                errors: w.new.errors,
                baseline_requests: w.old.requests,
                baseline_errors: w.old.errors,
                text: w.to_string(),
            }),
            workers: workers
                .iter()
                .map(|w| WorkerJson {
                    id: w.id.0,
                    pid: w.pid,
                    generation: w.generation.0,
                    state: w.state.as_str().to_owned(),
                    sessions: w.in_flight,
                    processed: w.processed,
                    uptime_s: w.uptime.as_secs(),
                    cpu_percent: (w.cpu_percent * 10.0).round() / 10.0,
                    memory_bytes: w.memory_bytes,
                    last_used_s: w.last_used.map(|d| d.as_secs()),
                    unit: w.unit.clone(),
                    address: w.addr.to_string(),
                    oldest_request_s: w.busy_for.map(|d| d.as_secs()),
                    stuck: w.stuck,
                })
                .collect(),
            status_line: status_line(state, workers, target),
        }
    }

    /// The table `baton status` prints.
    pub fn render(&self, colour: bool) -> String {
        let [bold, red, yellow, _, reset] = palette(colour);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{bold}App:{reset} {}  ({} backend)",
            self.app, self.backend
        );
        let _ = writeln!(
            out,
            "{bold}Generation:{reset} {}  (config generation {})",
            self.generation, self.config_generation
        );
        let _ = writeln!(
            out,
            "{bold}Workers:{reset} {} (target {})",
            self.workers.len(),
            self.target
        );
        let _ = writeln!(out, "{bold}Requests in queue:{reset} {}", self.queue);
        if let Some(r) = &self.rolling_restart {
            let rollback = r
                .rollback_to
                .map(|g| format!(" (a rollback to the release of generation {g})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{yellow}Rolling restarting... ({}/{}) to generation {}{rollback}: {}{reset}",
                r.done, r.total, r.generation, r.waiting_on
            );
        }
        if let Some(w) = &self.watch {
            let _ = writeln!(out, "{bold}Watching:{reset} {}", w.text);
        }
        if let Some(r) = &self.resisting_deployment_error {
            let _ = writeln!(
                out,
                "{red}{bold}Resisting deployment error:{reset}{red} {} since {} (generation {}){reset}",
                r.reason, r.since, r.generation
            );
            for line in &r.output {
                let _ = writeln!(out, "{red}  | {line}{reset}");
            }
            let _ = writeln!(out, "  Fix the release and restart, or run `baton resume`.");
        }
        if let Some(f) = &self.last_spawn_failure {
            let _ = writeln!(out, "{yellow}Last spawn failure:{reset} {f}");
        }
        self.table(&mut out, colour);
        out
    }

    /// A line per worker, under a blank line.
    fn table(&self, out: &mut String, colour: bool) {
        let [bold, red, yellow, green, reset] = palette(colour);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{bold}{:>4} {:>8} {:>4} {:<9} {:>8} {:>10} {:>8} {:>6} {:>9} {:>9}{reset}",
            "ID",
            "PID",
            "GEN",
            "STATE",
            "SESSIONS",
            "PROCESSED",
            "UPTIME",
            "CPU",
            "MEMORY",
            "LAST USED"
        );
        for w in &self.workers {
            let state_colour = match w.state.as_str() {
                "ready" => green,
                "spawning" | "draining" => yellow,
                _ => red,
            };
            let _ = writeln!(
                out,
                "{:>4} {:>8} {:>4} {state_colour}{:<9}{reset} {:>8} {:>10} {:>8} {:>5.1}% {:>9} {:>9}",
                w.id,
                w.pid.map_or("-".into(), |p| p.to_string()),
                w.generation,
                w.state,
                w.sessions,
                w.processed,
                short_duration(w.uptime_s),
                w.cpu_percent,
                short_bytes(w.memory_bytes),
                w.last_used_s
                    .map_or("never".into(), |s| format!("{} ago", short_duration(s))),
            );
            if let Some(unit) = &w.unit {
                let _ = writeln!(out, "{:>14} unit {unit}", "");
            }
            if w.stuck {
                let _ = writeln!(
                    out,
                    "{:>14} {red}stuck{reset}: left a request unanswered past max_request_time; being replaced",
                    ""
                );
            } else if let Some(age) = w.oldest_request_s.filter(|s| *s >= 10) {
                let _ = writeln!(out, "{:>14} oldest request in flight: {age} s", "");
            }
        }
    }
}

/// Bold, red, yellow, green and reset: ANSI colours, or nothing.
fn palette(colour: bool) -> [&'static str; 5] {
    if colour {
        ["\x1b[1m", "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[0m"]
    } else {
        [""; 5]
    }
}

/// Adds what a draining worker is waiting for, e.g. "draining worker 3: 2 requests, oldest 12s".
impl RollingJson {
    pub fn new(r: &RollProgress, workers: &[WorkerView]) -> RollingJson {
        RollingJson {
            mode: r.mode.as_str().to_owned(),
            generation: r.generation.0,
            rollback_to: r.rollback_to.map(|g| g.0),
            done: r.done,
            total: r.total,
            waiting_on: waiting_on(&r.waiting_on, workers),
        }
    }
}

fn waiting_on(on: &WaitingOn, workers: &[WorkerView]) -> String {
    if let WaitingOn::Draining(id) = on
        && let Some(w) = workers.iter().find(|w| w.id == *id)
        && w.in_flight > 0
    {
        let oldest = w.busy_for.map(|d| d.as_secs()).unwrap_or(0);
        return format!(
            "{on}: {} request{}, oldest {oldest} s",
            w.in_flight,
            if w.in_flight == 1 { "" } else { "s" }
        );
    }
    on.to_string()
}

/// The one-line state for STATUS= and the top of `baton status`.
pub fn status_line(state: &RestartState, workers: &[WorkerView], target: usize) -> String {
    if state.phase.is_stopping() {
        return "stopping: /health answers 503, finishing requests in flight".into();
    }
    if let Some(r) = state.phase.resisting() {
        let since = humantime::format_rfc3339_seconds(r.since).to_string();
        // "2026-11-21T10:02:00Z" -> "10:02" keeps the line short; the date is in the journal.
        let hhmm = since.get(11..16).unwrap_or(&since);
        return format!("RESISTING DEPLOYMENT ERROR since {hhmm}: {}", r.reason);
    }
    if let Some(r) = state.phase.rolling() {
        if let Some(to) = r.rollback_to {
            return format!(
                "rollback {}/{} to the release of generation {to}, as generation {}",
                r.done, r.total, r.generation
            );
        }
        let mut line = format!(
            "{} restart {}/{} to generation {}",
            r.mode.as_str(),
            r.done,
            r.total,
            r.generation
        );
        // The canary is the step an operator waits on longest: its figures go in the line.
        if matches!(r.waiting_on, WaitingOn::Canary(_)) {
            let _ = write!(line, ", {}", r.waiting_on);
        }
        return line;
    }
    let ready = workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .count();
    let mut line = format!(
        "{ready}/{target} workers ready, generation {}",
        state.generation
    );
    if ready < target
        && let Some((_, why)) = &state.last_spawn_failure
    {
        let _ = write!(line, "; last spawn failure: {why}");
    }
    line
}

fn short_duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn short_bytes(b: u64) -> String {
    const M: u64 = 1 << 20;
    if b >= 1 << 30 {
        format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
    } else if b >= M {
        format!("{}M", b / M)
    } else {
        format!("{}K", b / 1024)
    }
}

/// What `GET /health` answers, for load balancers: 200 while baton serves (at least one ready
/// worker, not stopping), else 503; the body says why in a few fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// "serving", "stopping" or "unavailable".
    pub status: String,
    /// "starting", "steady", "rolling", "resisting" or "stopping" (see [`crate::state::Phase`]).
    pub phase: String,
    pub ready_workers: usize,
    pub generation: u64,
    pub resisting: bool,
}

impl Health {
    pub fn new(state: &RestartState, workers: &[WorkerView]) -> Health {
        let ready = workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .count();
        let status = if state.phase.is_stopping() {
            "stopping"
        } else if ready == 0 {
            "unavailable"
        } else {
            "serving"
        };
        Health {
            status: status.into(),
            phase: state.phase.name().into(),
            ready_workers: ready,
            generation: state.generation.0,
            resisting: state.phase.resisting().is_some(),
        }
    }

    pub fn http_status(&self) -> u16 {
        if self.status == "serving" { 200 } else { 503 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::Tally;
    use crate::spawn::Generation;
    use crate::state::{CanaryProgress, Phase, RestartMode};
    use std::time::Duration;

    #[test]
    fn the_status_line_shows_a_canary_as_it_runs() {
        let state = RestartState {
            phase: Phase::Rolling(RollProgress {
                mode: RestartMode::Rolling,
                generation: Generation(7),
                rollback_to: None,
                done: 1,
                total: 4,
                waiting_on: WaitingOn::Canary(CanaryProgress {
                    generation: Generation(7),
                    workers: 1,
                    new: Tally {
                        requests: 412,
                        errors: 1,
                        ..Tally::default()
                    },
                    old: Tally {
                        requests: 1630,
                        errors: 2,
                        ..Tally::default()
                    },
                    left: Duration::from_millis(18_400),
                }),
            }),
            ..RestartState::default()
        };
        assert_eq!(
            status_line(&state, &[], 4),
            "rolling restart 1/4 to generation 7, canary: generation 7, 1 worker, 412 requests, errors 0.24 % vs 0.12 %, 18s left"
        );
    }
}
