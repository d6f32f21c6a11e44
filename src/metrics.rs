//! Prometheus metrics: counters the proxy and the supervisor update, rendered with the status
//! snapshot in the text format at `/metrics` on the control socket (and on `[metrics] address`).

use crate::status::Snapshot;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the request latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// How a restart ended, for `baton_restarts_total{outcome=...}`.
#[derive(Clone, Copy, Debug)]
pub enum RestartOutcome {
    Succeeded,
    Resisted,
    Failed,
    Superseded,
    /// Cancelled because baton stops (SIGTERM).
    Cancelled,
}

#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by status class 1xx..5xx.
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    restarts: [AtomicU64; 5],
    /// Requests whose client left while they waited for a worker.
    abandoned: AtomicU64,
    /// Time limits: requests answered 504 at request_timeout, 503 at max_queue_time, and
    /// workers replaced for a request in flight past max_request_time.
    timed_out: [AtomicU64; 3],
    /// Access log entries dropped because its queue was full (shared with `access`).
    pub access_log_dropped: std::sync::Arc<AtomicU64>,
    /// Canary verdicts: worse, fine, inconclusive.
    canaries: [AtomicU64; 3],
    /// Rollbacks, by trigger: judge, death, operator.
    rollbacks: [AtomicU64; 3],
}

/// Which time limit was reached, for `baton_time_limits_total{limit=...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A worker had not begun its answer within `request_timeout` (a 504).
    RequestTimeout,
    /// A request waited `max_queue_time` for a worker (a 503).
    MaxQueueTime,
    /// A worker was replaced for a request in flight past `max_request_time`.
    MaxRequestTime,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::RequestTimeout => "request_timeout",
            Limit::MaxQueueTime => "max_queue_time",
            Limit::MaxRequestTime => "max_request_time",
        }
    }
}

/// What started a rollback, for `baton_rollbacks_total{trigger=...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackTrigger {
    /// The canary judge found the generation worse during its watch.
    Judge,
    /// A worker of the generation died during its watch.
    Death,
    /// `baton rollback`.
    Operator,
}

impl RollbackTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackTrigger::Judge => "judge",
            RollbackTrigger::Death => "death",
            RollbackTrigger::Operator => "operator",
        }
    }
}

impl Metrics {
    /// One request answered with `status` after `took` (time to the response head).
    pub fn request(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A request whose client closed its connection while it waited in the queue: no worker
    /// saw it.
    pub fn abandoned(&self) {
        self.abandoned.fetch_add(1, Relaxed);
    }

    /// A time limit was reached (see [`Limit`]).
    pub fn limit(&self, limit: Limit) {
        self.timed_out[limit as usize].fetch_add(1, Relaxed);
    }

    /// A canary judged (a "worse" found while the roll went on after its canary counts too).
    pub fn canary(&self, verdict: crate::canary::Verdict) {
        use crate::canary::Verdict;
        let i = match verdict {
            Verdict::Worse => 0,
            Verdict::Fine => 1,
            Verdict::Inconclusive => 2,
        };
        self.canaries[i].fetch_add(1, Relaxed);
    }

    pub fn rollback(&self, trigger: RollbackTrigger) {
        self.rollbacks[trigger as usize].fetch_add(1, Relaxed);
    }

    pub fn restart(&self, outcome: RestartOutcome) {
        self.restarts[outcome as usize].fetch_add(1, Relaxed);
    }

    /// The whole exposition: these counters plus the gauges of `s`.
    pub fn render(&self, s: &Snapshot) -> String {
        let mut out = String::new();
        gauges(&mut out, s);
        self.requests(&mut out, s);
        self.restarts(&mut out, s);
        out
    }

    /// The request counters and the answer-time histogram.
    fn requests(&self, out: &mut String, s: &Snapshot) {
        let app = &s.app;
        let _ = writeln!(
            out,
            "# HELP baton_requests_total Requests answered, by status class.\n# TYPE baton_requests_total counter"
        );
        for (i, c) in self.by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "baton_requests_total{{app=\"{app}\",class=\"{}xx\"}} {}",
                i + 1,
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP baton_requests_abandoned_total Requests whose client closed its connection while they waited for a worker; no worker saw them.\n# TYPE baton_requests_abandoned_total counter\nbaton_requests_abandoned_total{{app=\"{app}\"}} {}",
            self.abandoned.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP baton_time_limits_total Time limits reached: 504s at request_timeout, 503s at max_queue_time, workers replaced past max_request_time.\n# TYPE baton_time_limits_total counter"
        );
        for limit in [
            Limit::RequestTimeout,
            Limit::MaxQueueTime,
            Limit::MaxRequestTime,
        ] {
            let _ = writeln!(
                out,
                "baton_time_limits_total{{app=\"{app}\",limit=\"{}\"}} {}",
                limit.as_str(),
                self.timed_out[limit as usize].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP baton_access_log_dropped_total Access log entries dropped because the writer could not keep up (its queue was full); the proxy never waits for the log.\n# TYPE baton_access_log_dropped_total counter\nbaton_access_log_dropped_total{{app=\"{app}\"}} {}",
            self.access_log_dropped.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP baton_request_duration_seconds Time to the response head.\n# TYPE baton_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(
                out,
                "baton_request_duration_seconds_bucket{{app=\"{app}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "baton_request_duration_seconds_bucket{{app=\"{app}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "baton_request_duration_seconds_sum{{app=\"{app}\"}} {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "baton_request_duration_seconds_count{{app=\"{app}\"}} {count}"
        );
    }

    /// The restart, canary and rollback counters.
    fn restarts(&self, out: &mut String, s: &Snapshot) {
        let app = &s.app;
        let _ = writeln!(
            out,
            "# HELP baton_restarts_total Restarts, by outcome.\n# TYPE baton_restarts_total counter"
        );
        for (name, i) in [
            ("succeeded", 0),
            ("resisted", 1),
            ("failed", 2),
            ("superseded", 3),
            ("cancelled", 4),
        ] {
            let _ = writeln!(
                out,
                "baton_restarts_total{{app=\"{app}\",outcome=\"{name}\"}} {}",
                self.restarts[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP baton_canary_verdicts_total Canaries judged, by verdict (worse: the roll was stopped).\n# TYPE baton_canary_verdicts_total counter"
        );
        for (name, i) in [("worse", 0), ("fine", 1), ("inconclusive", 2)] {
            let _ = writeln!(
                out,
                "baton_canary_verdicts_total{{app=\"{app}\",verdict=\"{name}\"}} {}",
                self.canaries[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP baton_rollbacks_total Rollbacks to the previous generation's release, by trigger.\n# TYPE baton_rollbacks_total counter"
        );
        for t in [
            RollbackTrigger::Judge,
            RollbackTrigger::Death,
            RollbackTrigger::Operator,
        ] {
            let _ = writeln!(
                out,
                "baton_rollbacks_total{{app=\"{app}\",trigger=\"{}\"}} {}",
                t.as_str(),
                self.rollbacks[t as usize].load(Relaxed)
            );
        }
    }
}

/// The gauges: what `s` says now.
fn gauges(out: &mut String, s: &Snapshot) {
    let app = &s.app;
    let mut gauge = |name: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{{app=\"{app}\"{labels}}} {value}");
        }
    };
    gauge(
        "baton_generation",
        "The generation new workers come from.",
        vec![(String::new(), s.generation.to_string())],
    );
    gauge(
        "baton_queue",
        "Requests waiting for a free worker.",
        vec![(String::new(), s.queue.to_string())],
    );
    gauge(
        "baton_resisting",
        "1 while resisting a deployment error.",
        vec![(
            String::new(),
            u8::from(s.resisting_deployment_error.is_some()).to_string(),
        )],
    );
    gauge(
        "baton_rolling",
        "1 while a restart is in progress.",
        vec![(
            String::new(),
            u8::from(s.rolling_restart.is_some()).to_string(),
        )],
    );
    let mut by_state = Vec::new();
    let mut gens: Vec<u64> = s.workers.iter().map(|w| w.generation).collect();
    gens.sort_unstable();
    gens.dedup();
    for state in ["spawning", "ready", "draining", "stopping"] {
        for g in &gens {
            let n = s
                .workers
                .iter()
                .filter(|w| w.state == state && w.generation == *g)
                .count();
            if n > 0 {
                by_state.push((
                    format!(",state=\"{state}\",generation=\"{g}\""),
                    n.to_string(),
                ));
            }
        }
    }
    gauge(
        "baton_workers",
        "Workers by state and generation.",
        by_state,
    );
    let in_flight: usize = s.workers.iter().map(|w| w.sessions).sum();
    gauge(
        "baton_in_flight",
        "Requests being served by workers.",
        vec![(String::new(), in_flight.to_string())],
    );
    let drain_age = s
        .workers
        .iter()
        .filter(|w| w.state == "draining")
        .filter_map(|w| w.oldest_request_s)
        .max()
        .unwrap_or(0);
    gauge(
        "baton_drain_oldest_request_seconds",
        "Age of the oldest request a draining worker still serves.",
        vec![(String::new(), drain_age.to_string())],
    );
}
