//! The canary judge: is a new generation worse for visitors than the old one, on the same
//! traffic in the same window? Pure arithmetic on counts (no clock, no pool), so the whole
//! decision is tested on synthetic canaries in milliseconds.
//!
//! A request counts as an error when the worker answered it with a 5xx, gave no answer (a
//! refused or reset connection, a malformed head, a timeout) or cut its answer before its end.
//! The judge compares the two error rates with Newcombe's hybrid score interval for a
//! difference of proportions (Wilson's interval on each side, which stays honest near 0 % and
//! on small counts, where the textbook normal interval calls 1 error in 20 requests proof):
//! - **worse**: with 99.98 % confidence (one-sided), the new generation's error rate is above
//!   the old one's by more than [`TOLERANCE`], or its rate of dropped requests by more than
//!   [`DROP_TOLERANCE`]. Checked while the canary runs, at its 20th request and each time
//!   that count grew fourfold ([`Looks`]), so a release that fails every third request is
//!   stopped at its first 20 requests; the confidence is set so that, with those looks and
//!   one at the end, a release as good as the old one is called worse at most once in a
//!   thousand canaries (the unit tests measure it on 10,000 simulated canaries per case).
//! - **fine**: not worse, and the new generation served at least `min_requests`.
//! - **inconclusive**: not worse, on fewer requests: traffic was too thin to say.
//!
//! Latency is judged beside errors, at the same looks ([`LatencyComparison`]): how long each
//! worker took to begin its answer, counted in a log-scale histogram per worker
//! ([`Counter::record_latency`]). The new generation is worse when, with confidence, its median
//! or its 90th percentile is above a tolerance (1.5 by default) times the old generation's. The
//! bounds come from order statistics, so heavy tails and two-mode latencies (cache hits and
//! misses) need no model of their shape: in the simulations, a release as fast as the old one
//! or 1.2 times slower was never called slower in 10,000 canaries per case, and one 3 times
//! slower was caught every time the canary had a few hundred answers. A request that timed out
//! has no latency: it is an error, judged as such.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How far above the old generation's error rate the new one may be, as a fraction, before
/// it can be called worse: a difference smaller than this is not worth a rollback, and
/// without it a 0.01 % blip would be "worse" on a large enough sample.
pub const TOLERANCE: f64 = 0.005;

/// The same for dropped requests (no answer, a cut answer), judged on their own: a tenth of a
/// point, so that a release that drops one request in 500 more than the old one is caught,
/// while two generations that both drop 1 % (a flaky network between baton and its workers)
/// are not told apart by chance.
pub const DROP_TOLERANCE: f64 = 0.0005;

/// The one-sided normal quantile of the "worse" test (99.98 %): see the module comment.
pub const Z_WORSE: f64 = 3.6;

/// Requests the new generation must have served before it can be called worse: below this,
/// the score interval is too optimistic about a few unlucky errors in a row.
pub const MIN_EVIDENCE: u64 = 20;

/// The quantile of the upper bound that status and the journal report (99 %).
const Z_REPORT: f64 = 2.33;

/// Requests a generation's workers were given in a window, how many were errors, and how
/// many of those the worker dropped (no answer, or an answer cut before its end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    pub dropped: u64,
    /// Processes that ended inside live workers (beside each worker's own process, which
    /// is a death): an app server's master restarting a process that crashed.
    pub exits: u64,
    /// How long the workers were watched for `exits`, in milliseconds (summed over workers).
    pub exposure_ms: u64,
}

impl Tally {
    /// What was counted after `earlier`, a reading of the same counters.
    pub fn since(self, earlier: Tally) -> Tally {
        Tally {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            dropped: self.dropped.saturating_sub(earlier.dropped),
            exits: self.exits.saturating_sub(earlier.exits),
            exposure_ms: self.exposure_ms.saturating_sub(earlier.exposure_ms),
        }
    }

    /// This window's figures, with processes ending inside workers taken from `life`, the
    /// same generations' whole life: crashes behind an app server's master are rare, and a
    /// window of a few worker-minutes of the old release says little of how often it had
    /// them. A life shorter than [`PRIOR_EXPOSURE_MS`] gets one more exit in that much more
    /// time: an app with no history is taken to end about one process per worker-hour, so a
    /// release whose processes die every few seconds is still told apart from it.
    pub fn lived(self, life: Tally) -> Tally {
        let (exits, exposure_ms) = if life.exposure_ms < PRIOR_EXPOSURE_MS {
            (life.exits + 1, life.exposure_ms + PRIOR_EXPOSURE_MS)
        } else {
            (life.exits, life.exposure_ms)
        };
        Tally {
            exits,
            exposure_ms,
            ..self
        }
    }

    pub fn plus(self, other: Tally) -> Tally {
        Tally {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
            dropped: self.dropped + other.dropped,
            exits: self.exits + other.exits,
            exposure_ms: self.exposure_ms + other.exposure_ms,
        }
    }

    /// The share of requests that were errors (an answer both 5xx and cut counts once).
    pub fn rate(self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors.min(self.requests) as f64 / self.requests as f64
        }
    }

    fn errors(self) -> u64 {
        self.errors.min(self.requests)
    }

    /// The same tally counting only the dropped requests as errors.
    fn drops(self) -> Tally {
        Tally {
            errors: self.dropped.min(self.requests),
            ..self
        }
    }
}

/// What one request's exchange with a worker came to, as the judge counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The worker's answer head, with its status.
    Answered(u16),
    /// No answer: the connection was refused or reset, or the head was malformed or late.
    NoAnswer,
    /// An answer already counted was cut before its end by the worker.
    Cut,
}

impl Outcome {
    /// How this outcome changes a tally.
    pub fn tally(self) -> Tally {
        match self {
            Outcome::Answered(status) => Tally {
                requests: 1,
                errors: u64::from(status >= 500),
                ..Tally::default()
            },
            Outcome::NoAnswer => Tally {
                requests: 1,
                errors: 1,
                dropped: 1,
                ..Tally::default()
            },
            Outcome::Cut => Tally {
                errors: 1,
                dropped: 1,
                ..Tally::default()
            },
        }
    }
}

/// Counters one worker's requests are judged by, shared by every path that has the worker's
/// lease (lock-free: the proxy adds to them on every answer).
#[derive(Debug, Default)]
pub struct Counter {
    requests: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    exits: AtomicU64,
    exposure_ms: AtomicU64,
    latencies: Histogram,
    /// Answer times count from here on (see [`Counter::warm_up`]); unset: from the first.
    warm_from: std::sync::OnceLock<tokio::time::Instant>,
}

impl Counter {
    pub fn record(&self, outcome: Outcome) {
        let t = outcome.tally();
        if t.requests > 0 {
            self.requests.fetch_add(t.requests, Relaxed);
        }
        if t.errors > 0 {
            self.errors.fetch_add(t.errors, Relaxed);
        }
        if t.dropped > 0 {
            self.dropped.fetch_add(t.dropped, Relaxed);
        }
    }

    /// `exits` processes ended inside the worker over the last `watched`.
    pub fn churn(&self, exits: u64, watched: Duration) {
        self.exits.fetch_add(exits, Relaxed);
        self.exposure_ms.fetch_add(
            u64::try_from(watched.as_millis()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    pub fn read(&self) -> Tally {
        Tally {
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            exits: self.exits.load(Relaxed),
            exposure_ms: self.exposure_ms.load(Relaxed),
        }
    }

    /// A worker's answer head came `latency` after it had the request: one atomic add, on
    /// every answer past the worker's warm-up, whatever its status.
    pub fn record_latency(&self, latency: Duration) {
        if self
            .warm_from
            .get()
            .is_some_and(|from| tokio::time::Instant::now() < *from)
        {
            return;
        }
        self.latencies.0[bucket(micros(latency))].fetch_add(1, Relaxed);
    }

    /// The worker became ready and warms up for `settle` (`readiness.settle`): its answer
    /// times count only after it. A new process is slower at first (cold caches, page faults,
    /// lazy imports, a JIT), the more so on a busy machine, and a latency judge that counts
    /// that against a release refuses good ones: Kayenta and Flagger users learnt to give a
    /// canary a warm-up. Its errors count from its first request all the same.
    pub fn warm_up(&self, settle: Duration) {
        let _ = self.warm_from.set(tokio::time::Instant::now() + settle);
    }

    /// Every latency recorded so far: take one reading from another with [`Latencies::since`].
    pub fn latencies(&self) -> Latencies {
        Latencies {
            counts: std::array::from_fn(|i| self.latencies.0[i].load(Relaxed)),
        }
    }
}

/// The judge's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Worse,
    Fine,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Worse => "worse",
            Verdict::Fine => "fine",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// The two generations' figures in one window, and how far apart they may be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    pub new: Tally,
    pub old: Tally,
    /// The difference of error rates (new − old) is above this, with the "worse" confidence.
    pub lower: f64,
    /// ... and below this, with 99 % confidence.
    pub upper: f64,
    /// The same lower bound for the share of requests dropped (no answer, a cut answer).
    pub dropped_lower: f64,
    /// How likely the new generation's share of all process exits would be this high if both
    /// churned at the same rate per worker and second (a one-sided exact binomial test).
    pub churn_p: f64,
}

impl Comparison {
    pub fn of(new: Tally, old: Tally) -> Comparison {
        Comparison {
            new,
            old,
            lower: difference_interval(new, old, Z_WORSE).0,
            upper: difference_interval(new, old, Z_REPORT).1,
            dropped_lower: difference_interval(new.drops(), old.drops(), Z_WORSE).0,
            churn_p: churn_p(new, old),
        }
    }

    /// Strong evidence that the new generation fails more requests than the old one, by
    /// more than [`TOLERANCE`]: the verdict at any moment, not only at the window's end.
    /// Dropped requests are judged on their own, with a much smaller tolerance: a healthy app
    /// server practically never resets a connection or cuts an answer, so a few more of them
    /// than the old generation, beyond chance, is a release that crashes (often behind a
    /// master process that hides it by starting a new process at once).
    pub fn worse(&self) -> bool {
        self.worse_by_answers() || self.worse_by_churn()
    }

    fn worse_by_answers(&self) -> bool {
        self.new.requests >= MIN_EVIDENCE
            && (self.lower > TOLERANCE
                || (self.new.dropped > 0 && self.dropped_lower > DROP_TOLERANCE))
    }

    /// Whether the drops alone made it worse (for the reason given).
    pub fn worse_by_drops(&self) -> bool {
        self.worse_by_answers() && self.lower <= TOLERANCE
    }

    /// Whether every failure of the new generation was a request it dropped (no answer, a cut
    /// answer): what a dying worker leaves a moment before its death is seen.
    pub fn only_drops(&self) -> bool {
        self.new.dropped > 0 && self.new.dropped >= self.new.errors
    }

    /// Processes inside the new workers keep ending, far more often than inside the old
    /// ones: a release that crashes behind its app server's master, which starts a new
    /// process at once (so the worker lives on, and few requests fail).
    pub fn worse_by_churn(&self) -> bool {
        self.new.exits >= MIN_EXITS && self.churn_p < CHURN_ALPHA
    }

    /// The figures that made it worse, the new generation's then `old`'s: "failed 37 of 212
    /// requests (17.5 %) (5xx, no answer or a cut answer), generation 6 2 of 3,104 requests
    /// (0.06 %)", or, when drops alone did, "dropped 15 of 7,500 requests (0.20 %) (...)".
    pub fn against(&self, old: &str) -> String {
        if self.worse_by_churn() && !self.worse_by_answers() {
            let secs = |t: Tally| thousands(t.exposure_ms / 1000);
            format!(
                "had {} process{} end inside its workers in {} worker-seconds (an app server's master restarting what crashed), {old} {} in {} over its whole life (a short life counts one more in a worker-hour)",
                thousands(self.new.exits),
                if self.new.exits == 1 { "" } else { "es" },
                secs(self.new),
                thousands(self.old.exits),
                secs(self.old)
            )
        } else if self.worse_by_drops() {
            format!(
                "dropped {} (no answer, or an answer cut before its end), {old} {}",
                Share(self.new.drops()),
                Share(self.old.drops())
            )
        } else {
            format!(
                "failed {} (5xx, no answer or a cut answer), {old} {}",
                Share(self.new),
                Share(self.old)
            )
        }
    }

    /// The verdict at the end of the window.
    pub fn verdict(&self, min_requests: u64) -> Verdict {
        if self.worse() {
            Verdict::Worse
        } else if self.new.requests < min_requests {
            Verdict::Inconclusive
        } else {
            Verdict::Fine
        }
    }
}

/// When the judge looks during a canary: at the new generation's 20th request, then each time
/// that count grew fourfold (80, 320, 1,280, ...), and at the window's end. Few looks keep the
/// chance of a false "worse" low however long the window, while a release that fails outright
/// is still stopped at its first 20 requests.
#[derive(Clone, Copy, Debug)]
pub struct Looks {
    next: u64,
    /// The same schedule for process exits: at the 3rd, then each time they doubled.
    next_exits: u64,
}

impl Default for Looks {
    fn default() -> Self {
        Looks {
            next: MIN_EVIDENCE,
            next_exits: MIN_EXITS,
        }
    }
}

impl Looks {
    /// Whether to judge now, with the new generation's figures at `t`.
    pub fn due(&mut self, t: Tally) -> bool {
        let mut due = false;
        if t.requests >= self.next {
            while self.next <= t.requests {
                self.next = self.next.saturating_mul(4);
            }
            due = true;
        }
        if t.exits >= self.next_exits {
            while self.next_exits <= t.exits {
                self.next_exits = self.next_exits.saturating_mul(2);
            }
            due = true;
        }
        due
    }
}

/// Process exits inside the new workers before churn can be called worse.
pub const MIN_EXITS: u64 = 3;

/// The prior of [`Tally::lived`]: one worker-hour.
pub const PRIOR_EXPOSURE_MS: u64 = 3_600_000;

/// The least time a request must have gone unanswered before a generation can be said to hang.
pub const HANG_FLOOR: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a request of the new generation may go unanswered before it counts as a hang:
/// four times the slowest answer the old generation gave lately (`old_slowest`, when known),
/// at least [`HANG_FLOOR`], and never past `request_timeout` (which answers it with a 504).
pub fn hang_bound(
    request_timeout: Option<std::time::Duration>,
    old_slowest: Option<std::time::Duration>,
) -> std::time::Duration {
    let bound = old_slowest.map_or(HANG_FLOOR, |s| (s * 4).max(HANG_FLOOR));
    request_timeout.map_or(bound, |t| bound.min(t))
}

/// Whether the new generation hangs: a request of it has gone unanswered for `bound`, while
/// the old one has none unanswered for half as long (an app whose requests are long by
/// design, long polls, has them in both generations). A request that hangs never ends, so no
/// count of answers can show it: the judge looks at what is in flight.
pub fn hangs(
    new_oldest: Option<std::time::Duration>,
    old_oldest: Option<std::time::Duration>,
    bound: std::time::Duration,
) -> bool {
    new_oldest.is_some_and(|n| n >= bound) && old_oldest.is_none_or(|o| o < bound / 2)
}

#[cfg(test)]
mod lived_tests {
    use super::*;

    fn churn(exits: u64, exposure_s: u64) -> Tally {
        Tally {
            requests: 1000,
            exits,
            exposure_ms: exposure_s * 1000,
            ..Tally::default()
        }
    }

    /// Issue 36: a release whose app process dies every 5 s behind its master is refused in
    /// a 30 s canary of one worker even when the old workers ran only seconds (the prior),
    /// and one dying every 40 s is rolled back within a 5-minute watch of three workers;
    /// a release as good as the old one is not.
    #[test]
    fn exits_are_judged_against_the_old_generations_whole_life() {
        let window = churn(0, 20);
        for life in [churn(0, 20), churn(0, 3_600), churn(2, 7_200)] {
            let old = window.lived(life);
            assert!(
                Comparison::of(churn(6, 30), old).worse_by_churn(),
                "{life:?}"
            );
            assert!(
                Comparison::of(churn(22, 900), old).worse_by_churn(),
                "{life:?}"
            );
            assert!(
                !Comparison::of(churn(0, 30), old).worse_by_churn(),
                "{life:?}"
            );
            assert!(
                !Comparison::of(churn(1, 900), old).worse_by_churn(),
                "{life:?}"
            );
        }
        // The same old generation watched only during a 20 s roll, as before: every 40 s
        // passed.
        assert!(!Comparison::of(churn(2, 60), churn(0, 20)).worse_by_churn());
    }
}

/// The churn test's significance (one-sided), as strict as the answers' test.
pub const CHURN_ALPHA: f64 = 0.0002;

/// P(X >= new.exits) for X ~ Binomial(new.exits + old.exits, share of the new generation in the
/// exposure): how likely so many of all exits would fall in the new generation by chance.
fn churn_p(new: Tally, old: Tally) -> f64 {
    let exposure = new.exposure_ms + old.exposure_ms;
    if new.exits == 0 || exposure == 0 {
        return 1.0;
    }
    let n = new.exits + old.exits;
    let p = new.exposure_ms as f64 / exposure as f64;
    if p >= 1.0 {
        // No old worker was watched: nothing to compare with.
        return 1.0;
    }
    // The upper tail, summed in logs (n stays small: exits are rare).
    let ln_choose = |n: u64, k: u64| -> f64 {
        (1..=k)
            .map(|i| ((n - k + i) as f64).ln() - (i as f64).ln())
            .sum()
    };
    (new.exits..=n)
        .map(|k| (ln_choose(n, k) + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp())
        .sum::<f64>()
        .min(1.0)
}

/// Wilson's score interval for `errors` of `requests` at quantile `z`.
fn wilson(t: Tally, z: f64) -> (f64, f64) {
    if t.requests == 0 {
        return (0.0, 1.0);
    }
    let n = t.requests as f64;
    let p = t.errors() as f64 / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval (his method 10) for `new`'s rate minus `old`'s.
fn difference_interval(new: Tally, old: Tally, z: f64) -> (f64, f64) {
    let (p1, p0) = (new.rate(), old.rate());
    let (l1, u1) = wilson(new, z);
    let (l0, u0) = wilson(old, z);
    let d = p1 - p0;
    (
        d - ((p1 - l1).powi(2) + (u0 - p0).powi(2)).sqrt(),
        d + ((u1 - p1).powi(2) + (p0 - l0).powi(2)).sqrt(),
    )
}

/// How many times slower than the old generation the new one may be, at its median or its
/// 90th percentile, before it can be called worse (`[canary] latency_tolerance`): a release
/// a little slower is often the price of a feature, and a canary's few hundred answers could
/// not tell a small slowdown from chance anyway; one that makes visitors wait half as long
/// again is worth stopping.
pub const LATENCY_TOLERANCE: f64 = 1.5;

/// Answers each generation must have been timed on before the new one can be called slower:
/// below this, the bounds of a quantile are too wide to say anything (the error judge's
/// [`MIN_EVIDENCE`]).
pub const MIN_LATENCIES: u64 = 20;

/// How often each confidence bound of a quantile may be wrong (one-sided): see
/// [`LatencyComparison`]. Less strict than the error judge's [`Z_WORSE`], because the
/// tolerance already keeps a release as fast as the old one far from "worse", so this mainly
/// trades power against the one case the simulations found where the old generation's bound
/// alone stands between a good release and a rollback: a cold start of a bimodal app, whose
/// first slow answers lift the canary's p90 across the gap between its two modes (2 in 10,000
/// at 0.001; at 0.005 a 2x slowdown is caught more often, and so are cold starts).
pub const LATENCY_ALPHA: f64 = 0.001;

// The histogram's buckets: 8 per power of two (each 6 to 12.5 % wide, a fine grain next to
// the tolerance), from 64 µs to 2^27 µs (134 s), in 168 counters (1.3 KiB a worker). Faster
// answers count as 64 µs: no visitor tells them apart, and a proxy's own hop costs about that.
// Slower ones count in the last bucket: the default `request_timeout` (1 min) has answered
// them with a 504 long before, which the error judge counts.
const SUB_BITS: u32 = 3;
const MIN_EXP: u32 = 6;
const MAX_EXP: u32 = 27;
const BUCKETS: usize = ((MAX_EXP - MIN_EXP) << SUB_BITS) as usize;

/// A duration in whole microseconds, saturating (no u128 division on the proxy's path).
fn micros(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
}

/// The bucket of a latency in microseconds: its power of two, then the 3 bits below the top one.
fn bucket(micros: u64) -> usize {
    let v = micros.clamp(1 << MIN_EXP, (1 << MAX_EXP) - 1);
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (((exp - MIN_EXP) << SUB_BITS) as usize) + sub as usize
}

/// Where bucket `i` begins, in microseconds; `edge(BUCKETS)` is where the last one ends.
fn edge(i: usize) -> u64 {
    let exp = MIN_EXP + (i >> SUB_BITS) as u32;
    let sub = (i & ((1 << SUB_BITS) - 1)) as u64;
    ((1 << SUB_BITS) + sub) << (exp - SUB_BITS)
}

/// One worker's answer latencies, a counter per bucket (lock-free, as the rest of [`Counter`]).
struct Histogram([AtomicU64; BUCKETS]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = std::array::from_fn(|i| self.0[i].load(Relaxed));
        Latencies { counts }.fmt(f)
    }
}

/// A reading of answer latencies: how many answers fell in each bucket. Read from a
/// [`Counter`], taken apart with `since` and summed over workers with `plus`, as a [`Tally`].
#[derive(Clone, PartialEq, Eq)]
pub struct Latencies {
    counts: [u64; BUCKETS],
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            counts: [0; BUCKETS],
        }
    }
}

impl fmt::Debug for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latencies")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p90", &self.quantile(0.9))
            .finish()
    }
}

impl Latencies {
    /// What was counted after `earlier`, a reading of the same counters.
    pub fn since(mut self, earlier: &Latencies) -> Latencies {
        for (c, e) in self.counts.iter_mut().zip(&earlier.counts) {
            *c = c.saturating_sub(*e);
        }
        self
    }

    pub fn plus(mut self, other: &Latencies) -> Latencies {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c = c.saturating_add(*o);
        }
        self
    }

    /// How many answers were timed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency below which a share `p` of the answers came (0.5: the median), interpolated
    /// within its bucket; `None` without answers. Off by at most a bucket's width (12.5 %).
    pub fn quantile(&self, p: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = p.clamp(0.0, 1.0) * n as f64;
        let mut below = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let share = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                let (lo, hi) = (edge(i) as f64, edge(i + 1) as f64);
                return Some(Duration::from_micros(
                    (lo + share * (hi - lo)).round() as u64
                ));
            }
            below += c;
        }
        Some(Duration::from_micros(edge(BUCKETS)))
    }

    fn quantiles(&self) -> Quantiles {
        Quantiles {
            count: self.count(),
            p50: self.quantile(0.5).unwrap_or_default(),
            p90: self.quantile(0.9).unwrap_or_default(),
        }
    }

    /// The bucket of the `k`th fastest answer (from 1).
    fn bucket_of_rank(&self, k: u64) -> Option<usize> {
        if k == 0 {
            return None;
        }
        let mut seen = 0;
        self.counts.iter().position(|&c| {
            seen += c;
            seen >= k
        })
    }

    /// A latency, in microseconds, that the `p`-quantile of what these answers were drawn from
    /// is above, wrong with probability at most `alpha`. The lower edge of its order
    /// statistic's bucket: the histogram's grain never adds confidence the answers do not give.
    fn lower_bound(&self, p: f64, alpha: f64) -> f64 {
        let (low, _) = rank_bounds(self.count(), p, alpha);
        match self.bucket_of_rank(low) {
            // The first bucket also holds everything faster than its edge.
            Some(i) if i > 0 => edge(i) as f64,
            _ => 0.0,
        }
    }

    /// The same from above: the upper edge of its order statistic's bucket.
    fn upper_bound(&self, p: f64, alpha: f64) -> f64 {
        let (_, high) = rank_bounds(self.count(), p, alpha);
        match self.bucket_of_rank(high) {
            // The last bucket also holds everything slower than its edge.
            Some(i) if i + 1 < BUCKETS => edge(i + 1) as f64,
            _ => f64::INFINITY,
        }
    }
}

/// Distribution-free confidence bounds for the `p`-quantile of a sample of `n`, as ranks of
/// its order statistics (from 1): the count of answers below the true quantile is
/// Binomial(n, p), so the `low`th fastest answer is above the quantile with probability
/// P(B < low) <= alpha, and the `high`th is below it with probability P(B >= high) <= alpha.
/// `low` is 0 and `high` is n + 1 when the sample is too small for a bound on that side.
fn rank_bounds(n: u64, p: f64, alpha: f64) -> (u64, u64) {
    if n == 0 || !(p > 0.0 && p < 1.0) {
        return (0, n + 1);
    }
    // The binomial probabilities relative to the mode's, walked outwards until they no longer
    // matter: no factorials to overflow, and a few thousand steps for a million answers.
    const NEGLIGIBLE: f64 = 1e-30;
    let up = |k: u64| (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p); // P(k + 1) / P(k)
    let mode = (((n + 1) as f64 * p).floor() as u64).min(n);
    let mut below = Vec::new(); // P(mode - 1), P(mode - 2), ...
    let (mut w, mut k) = (1.0, mode);
    while k > 0 && w > NEGLIGIBLE {
        k -= 1;
        w /= up(k);
        below.push(w);
    }
    let mut above = Vec::new(); // P(mode + 1), P(mode + 2), ...
    let (mut w, mut k) = (1.0, mode);
    while k < n && w > NEGLIGIBLE {
        w *= up(k);
        k += 1;
        above.push(w);
    }
    let total = 1.0 + below.iter().sum::<f64>() + above.iter().sum::<f64>();
    let lowest = mode - below.len() as u64;
    let highest = mode + above.len() as u64;

    let mut low = lowest;
    let mut cdf = 0.0;
    for (i, w) in below
        .iter()
        .rev()
        .chain(std::iter::once(&1.0))
        .chain(&above)
        .enumerate()
    {
        cdf += w / total;
        if cdf > alpha {
            break;
        }
        low = lowest + i as u64 + 1;
    }
    let mut high = highest + 1;
    let mut tail = 0.0;
    for (i, w) in above
        .iter()
        .rev()
        .chain(std::iter::once(&1.0))
        .chain(&below)
        .enumerate()
    {
        tail += w / total;
        if tail > alpha {
            break;
        }
        high = highest - i as u64;
    }
    (low, high)
}

/// A generation's latencies in a window, as the judge reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quantiles {
    pub count: u64,
    /// Zero without answers, as `p90`.
    pub p50: Duration,
    pub p90: Duration,
}

/// Is the new generation slower than the old one beyond a tolerance, at the median or the
/// 90th percentile, on the answers of the same window?
///
/// The test: for each of the two quantiles, a lower confidence bound of the new generation's
/// and an upper bound of the old one's, both from order statistics (see `rank_bounds`); worse
/// when the first is above `tolerance` times the second. Why this one:
/// - it asks the question the operator set ("1.5 times as slow, at the median or the p90"),
///   on the figures the reason gives;
/// - it is exact for any distribution and any count, with no variance to estimate: latencies
///   are heavy-tailed (one 10 s answer in a thousand would swamp a t-test on means) and often
///   bimodal (a cache hit or a miss), and the judge looks from the 20th answer on;
/// - the histogram's grain is taken against the verdict (the bucket edges away from "worse"),
///   so it costs up to a bucket's width on each side (6 to 12.5 %) of power, never a false
///   alarm;
/// - a Mann-Whitney U test on the histograms with the old one shifted by the tolerance would
///   use every answer and so see a uniform slowdown sooner, but it answers another question
///   ("is a random new answer slower than 1.5 times a random old one more often than not?"),
///   which stays "no" when only the slowest tenth of the pages got slower, however much
///   slower; and its ties within buckets take corrections that its normal approximation gets
///   wrong on small counts.
///
/// Each bound is wrong with probability at most [`LATENCY_ALPHA`], so a release exactly
/// `tolerance` times slower is called worse at a look with probability at most twice that
/// per quantile, and one within the tolerance far less; the unit tests measure it with the
/// error judge's [`Looks`] on 10,000 simulated canaries per case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyComparison {
    pub new: Quantiles,
    pub old: Quantiles,
    /// At least 1: a faster release is never worse.
    pub tolerance: f64,
    /// The new generation's median (what most visitors wait) is at least this many times the
    /// old one's, with the judge's confidence (0 when the answers are too few to say).
    pub p50_ratio: f64,
    /// The same for the 90th percentile: the pages that were already slow, which a release
    /// often makes slower first (a query that lost its index), the median unchanged.
    pub p90_ratio: f64,
    /// By how much, in µs, the new generation's median is at least slower (the same bounds).
    pub p50_excess: f64,
    pub p90_excess: f64,
}

/// How much slower, besides `latency_tolerance` times, the new generation must be at a
/// quantile before it is worse: a fresh worker on a busy machine answers a 150 µs page in
/// 600 µs (cold caches, a scheduler that favours the warm ones), four times slower and of no
/// matter to a visitor; 20 ms more per page is.
pub const LATENCY_SLACK_US: f64 = 2_000.0;

impl LatencyComparison {
    /// `tolerance` is a ratio ([`LATENCY_TOLERANCE`] by default); below 1 it counts as 1.
    pub fn of(new: &Latencies, old: &Latencies, tolerance: f64) -> LatencyComparison {
        let bounds = |p: f64| {
            (
                new.lower_bound(p, LATENCY_ALPHA),
                old.upper_bound(p, LATENCY_ALPHA),
            )
        };
        let ratio = |(slow, fast): (f64, f64)| if fast.is_finite() { slow / fast } else { 0.0 };
        let excess = |(slow, fast): (f64, f64)| if fast.is_finite() { slow - fast } else { 0.0 };
        LatencyComparison {
            new: new.quantiles(),
            old: old.quantiles(),
            tolerance: tolerance.max(1.0),
            p50_ratio: ratio(bounds(0.5)),
            p90_ratio: ratio(bounds(0.9)),
            p50_excess: excess(bounds(0.5)),
            p90_excess: excess(bounds(0.9)),
        }
    }

    /// Strong evidence that the new generation is slower than `tolerance` times the old one,
    /// at its median or its 90th percentile: the verdict at any look, as
    /// [`Comparison::worse`] for errors.
    pub fn worse(&self) -> bool {
        self.new.count >= MIN_LATENCIES
            && self.old.count >= MIN_LATENCIES
            && ((self.p50_ratio > self.tolerance && self.p50_excess > LATENCY_SLACK_US)
                || (self.p90_ratio > self.tolerance && self.p90_excess > LATENCY_SLACK_US))
    }

    /// "generation 7 p50 61 ms / p90 140 ms vs generation 6 19 ms / 45 ms", with the
    /// generations' names the caller gives.
    pub fn describe(&self, new: &str, old: &str) -> String {
        format!(
            "{new} p50 {} / p90 {} vs {old} {} / {}",
            Millis(self.new.p50),
            Millis(self.new.p90),
            Millis(self.old.p50),
            Millis(self.old.p90)
        )
    }
}

/// A latency with the digits that matter: "850 µs", "2.1 ms", "61 ms", "1.40 s".
pub struct Millis(pub Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = micros(self.0);
        let ms = us as f64 / 1000.0;
        if us < 1000 {
            write!(f, "{us} µs")
        } else if us < 10_000 {
            write!(f, "{ms:.1} ms")
        } else if us < 1_000_000 {
            write!(f, "{ms:.0} ms")
        } else {
            write!(f, "{:.2} s", ms / 1000.0)
        }
    }
}

/// "37 of 212 requests (17.5 %)".
pub struct Share(pub Tally);

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{} of {} request{} ({})",
            thousands(t.errors()),
            thousands(t.requests),
            if t.requests == 1 { "" } else { "s" },
            Percent(t.rate())
        )
    }
}

/// A rate as a percentage with the digits that matter: "17.5 %", "0.06 %", "0 %".
pub struct Percent(pub f64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0 * 100.0;
        if p == 0.0 {
            f.write_str("0 %")
        } else if p < 1.0 {
            write!(f, "{p:.2} %")
        } else {
            write!(f, "{p:.1} %")
        }
    }
}

/// 3104 → "3,104".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(requests: u64, errors: u64) -> Tally {
        Tally {
            requests,
            errors,
            ..Tally::default()
        }
    }

    /// `dropped` of `requests` dropped, and no other error.
    fn d(requests: u64, dropped: u64) -> Tally {
        Tally {
            requests,
            errors: dropped,
            dropped,
            ..Tally::default()
        }
    }

    /// `exits` process exits in `seconds` worker-seconds, with traffic that is all fine.
    fn c(exits: u64, seconds: u64) -> Tally {
        Tally {
            requests: 1000,
            exits,
            exposure_ms: seconds * 1000,
            ..Tally::default()
        }
    }

    /// Both generations churn at `old_rate` exits per worker-second, the new one at `new_rate`:
    /// a canary of one worker beside three old ones, sampled every 2 s for `seconds`. The
    /// sample it was called worse at, if it was.
    fn canary_churn(rng: &mut Rng, seconds: u64, new_rate: f64, old_rate: f64) -> Option<u64> {
        let (mut new, mut old) = (Tally::default(), Tally::default());
        let mut looks = Looks::default();
        for at in (2..=seconds).step_by(2) {
            // Poisson by inversion; the rates are small.
            let poisson = |rng: &mut Rng, mean: f64| {
                let u = rng.next();
                let (mut k, mut pmf) = (0u64, (-mean).exp());
                let mut cdf = pmf;
                while cdf < u && k < 1000 {
                    k += 1;
                    pmf *= mean / k as f64;
                    cdf += pmf;
                }
                k
            };
            new = new.plus(Tally {
                requests: 100,
                exits: poisson(rng, new_rate * 2.0),
                exposure_ms: 2000,
                ..Tally::default()
            });
            old = old.plus(Tally {
                requests: 300,
                exits: poisson(rng, old_rate * 2.0 * 3.0),
                exposure_ms: 6000,
                ..Tally::default()
            });
            if (looks.due(new) || at == seconds) && Comparison::of(new, old).worse() {
                return Some(at);
            }
        }
        None
    }

    #[test]
    fn processes_that_keep_ending_inside_the_new_workers_are_judged_against_the_old_ones() {
        // A gunicorn worker process that crashes every 5 s behind its master, for 30 s,
        // against none in three old workers: caught.
        assert!(Comparison::of(c(7, 30), c(0, 90)).worse_by_churn());
        // Too few to tell from chance.
        assert!(!Comparison::of(c(2, 30), c(0, 90)).worse());
        // Both recycle their processes alike (gunicorn's max_requests): not worse.
        assert!(!Comparison::of(c(6, 30), c(18, 90)).worse());
        assert_eq!(
            Comparison::of(c(7, 30), c(0, 90)).against("generation 6"),
            "had 7 processes end inside its workers in 30 worker-seconds (an app server's master restarting what crashed), generation 6 0 in 90 over its whole life (a short life counts one more in a worker-hour)"
        );
        let mut rng = Rng(17);
        for rate in [0.01, 0.05, 0.2] {
            let worse = (0..RUNS)
                .filter(|_| canary_churn(&mut rng, SECONDS, rate, rate).is_some())
                .count();
            let share = worse as f64 / f64::from(RUNS);
            println!(
                "equal churn, {rate} exits per worker-second: called worse in {worse} of {RUNS} ({})",
                Percent(share)
            );
            assert!(share <= 0.001, "{worse} false alarms at {rate}");
        }
        for (new, old) in [(0.2, 0.0), (0.1, 0.0), (0.2, 0.02)] {
            let caught = (0..RUNS)
                .filter(|_| canary_churn(&mut rng, SECONDS, new, old).is_some())
                .count();
            println!(
                "churn {new} vs {old} exits per worker-second: caught in {caught} of {RUNS} ({}) within {SECONDS} s",
                Percent(caught as f64 / f64::from(RUNS))
            );
        }
    }

    #[test]
    fn clear_cases() {
        // Every third request fails, against none: worse after a few dozen.
        assert!(Comparison::of(t(30, 10), t(120, 0)).worse());
        // One error in twenty is no proof.
        assert!(!Comparison::of(t(20, 1), t(80, 0)).worse());
        // Twenty in a row fail, against none of 100: strong enough.
        assert!(Comparison::of(t(20, 20), t(100, 0)).worse());
        assert!(!Comparison::of(t(19, 19), t(100, 0)).worse());
        // The same rate on both sides is never worse, however many requests.
        assert!(!Comparison::of(t(1_000_000, 10_000), t(4_000_000, 40_000)).worse());
        // An old generation with no traffic proves nothing either way.
        assert!(!Comparison::of(t(100, 50), t(0, 0)).worse());
        // Within the tolerance: 0.3 points more is not worth a rollback.
        assert!(!Comparison::of(t(1_000_000, 4_000), t(1_000_000, 1_000)).worse());
        assert_eq!(
            Comparison::of(t(10, 0), t(10, 0)).verdict(200),
            Verdict::Inconclusive
        );
        assert_eq!(
            Comparison::of(t(300, 1), t(900, 2)).verdict(200),
            Verdict::Fine
        );
        assert_eq!(
            Comparison::of(t(300, 60), t(900, 2)).verdict(200),
            Verdict::Worse
        );
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(Share(t(212, 37)).to_string(), "37 of 212 requests (17.5 %)");
        assert_eq!(
            Share(t(3104, 2)).to_string(),
            "2 of 3,104 requests (0.06 %)"
        );
        assert_eq!(Share(t(1, 0)).to_string(), "0 of 1 request (0 %)");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        // A 5xx that is also cut is one failed request.
        assert_eq!(t(1, 2).rate(), 1.0);
    }

    /// A small, seeded generator: the simulations are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Binomial(n, p) by inversion: np is small here.
        fn binomial(&mut self, n: u64, p: f64) -> u64 {
            if p <= 0.0 {
                return 0;
            }
            let u = self.next();
            let q = 1.0 - p;
            let mut pmf = q.powf(n as f64);
            let mut cdf = pmf;
            let mut k = 0;
            while cdf < u && k < n {
                pmf *= (n - k) as f64 / (k + 1) as f64 * p / q;
                k += 1;
                cdf += pmf;
            }
            k
        }
    }

    /// One canary as the roll runs it: `seconds` of traffic, `new_rps` to the canary and four
    /// times that to the old generation (one canary beside four old workers), judged when
    /// [`Looks`] says, and at the end. The second it was called worse, if it was.
    fn canary(rng: &mut Rng, seconds: u64, new_rps: u64, p_new: f64, p_old: f64) -> Option<u64> {
        let (mut new, mut old) = (Tally::default(), Tally::default());
        let mut looks = Looks::default();
        for second in 1..=seconds {
            new = new.plus(t(new_rps, rng.binomial(new_rps, p_new)));
            old = old.plus(t(4 * new_rps, rng.binomial(4 * new_rps, p_old)));
            if (looks.due(new) || second == seconds) && Comparison::of(new, old).worse() {
                return Some(second);
            }
        }
        None
    }

    /// The same, for a release whose only errors are dropped requests.
    fn canary_drops(
        rng: &mut Rng,
        seconds: u64,
        new_rps: u64,
        p_new: f64,
        p_old: f64,
    ) -> Option<u64> {
        let (mut new, mut old) = (Tally::default(), Tally::default());
        let mut looks = Looks::default();
        for second in 1..=seconds {
            new = new.plus(d(new_rps, rng.binomial(new_rps, p_new)));
            old = old.plus(d(4 * new_rps, rng.binomial(4 * new_rps, p_old)));
            if (looks.due(new) || second == seconds) && Comparison::of(new, old).worse() {
                return Some(second);
            }
        }
        None
    }

    #[test]
    fn dropped_requests_are_judged_on_their_own_without_false_alarms() {
        let mut rng = Rng(13);
        for rate in [0.0001, 0.001, 0.01] {
            for rps in [10, 50, 250] {
                let worse = (0..RUNS)
                    .filter(|_| canary_drops(&mut rng, SECONDS, rps, rate, rate).is_some())
                    .count();
                let share = worse as f64 / f64::from(RUNS);
                println!(
                    "equal drop rates {}: {rps} req/s to the canary, {SECONDS} s: called worse in {worse} of {RUNS} ({})",
                    Percent(rate),
                    Percent(share)
                );
                assert!(
                    share <= 0.001,
                    "{worse} false alarms at {rate} and {rps} req/s"
                );
            }
        }
        // A release that drops one request in 500 (an app server whose worker process
        // crashes now and then behind its master), against none.
        for rps in [10, 50, 250] {
            let caught = (0..RUNS)
                .filter(|_| canary_drops(&mut rng, SECONDS, rps, 0.002, 0.0).is_some())
                .count();
            println!(
                "0 % -> 0.20 % dropped: {rps} req/s to the canary: caught in {caught} of {RUNS} ({}) within {SECONDS} s",
                Percent(caught as f64 / f64::from(RUNS))
            );
        }
        // The 5xx tolerance does not apply to drops.
        assert!(Comparison::of(d(7500, 15), d(30000, 0)).worse());
        assert!(Comparison::of(d(7500, 15), d(30000, 0)).worse_by_drops());
        assert!(!Comparison::of(d(7500, 3), d(30000, 0)).worse());
        assert_eq!(
            Comparison::of(d(7500, 15), d(30000, 0)).against("generation 6"),
            "dropped 15 of 7,500 requests (0.20 %) (no answer, or an answer cut before its end), generation 6 0 of 30,000 requests (0 %)"
        );
        assert_eq!(
            Comparison::of(t(212, 37), t(3104, 2)).against("generation 6"),
            "failed 37 of 212 requests (17.5 %) (5xx, no answer or a cut answer), generation 6 2 of 3,104 requests (0.06 %)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_is_timed_after_its_warm_up_and_counted_from_its_first_answer() {
        let c = Counter::default();
        c.warm_up(Duration::from_secs(2));
        c.record(Outcome::Answered(500));
        c.record_latency(Duration::from_millis(40));
        assert_eq!(
            c.latencies().count(),
            0,
            "a cold worker's answer is not timed"
        );
        assert_eq!(c.read().errors, 1, "its errors count at once");
        tokio::time::advance(Duration::from_secs(2)).await;
        c.record_latency(Duration::from_millis(4));
        assert_eq!(c.latencies().count(), 1);
    }

    #[test]
    fn latencies_fall_in_log_buckets_that_saturate_at_both_ends() {
        assert_eq!(BUCKETS, 168);
        assert_eq!(
            (edge(0), edge(1), edge(8), edge(BUCKETS)),
            (64, 72, 128, 1 << 27)
        );
        for i in 0..BUCKETS {
            assert!(edge(i) < edge(i + 1));
            assert_eq!(bucket(edge(i)), i);
            assert_eq!(bucket(edge(i + 1) - 1), i);
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(micros(Duration::from_secs(u64::MAX)), u64::MAX);

        let c = Counter::default();
        assert_eq!(c.latencies().quantile(0.5), None);
        // 1 to 100 ms, one answer each.
        for ms in 1..=100 {
            c.record_latency(Duration::from_millis(ms));
        }
        let first = c.latencies();
        assert_eq!(first.count(), 100);
        for (p, exact) in [(0.5, 50.0), (0.9, 90.0), (0.1, 10.0)] {
            let q = first.quantile(p).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            assert!((q / exact - 1.0).abs() < 0.09, "p{p}: {q} ms");
        }
        c.record_latency(Duration::from_nanos(1));
        c.record_latency(Duration::from_secs(3600));
        let later = c.latencies();
        let since = later.clone().since(&first);
        assert_eq!(since.count(), 2);
        assert_eq!(since.quantile(0.0), Some(Duration::from_micros(64)));
        assert_eq!(since.quantile(1.0), Some(Duration::from_micros(1 << 27)));
        assert_eq!(since.plus(&first), later);
        assert_eq!(Latencies::default().since(&later).count(), 0);
    }

    #[test]
    fn quantile_bounds_are_the_binomial_order_statistics() {
        // Of 20, the 2nd fastest is above the median with probability 21 / 2^20 (2e-5), the
        // 3rd with 211 / 2^20 (2.01e-4): the 2nd is the bound at 0.0002.
        assert_eq!(rank_bounds(20, 0.5, 0.0002), (2, 19));
        // 20 answers say nothing from above about their p90: all 20 are below it 12 % of times.
        assert_eq!(rank_bounds(20, 0.9, 0.001).1, 21);
        assert_eq!(rank_bounds(0, 0.5, 0.001), (0, 1));
        assert_eq!(rank_bounds(3, 0.5, 0.001), (0, 4));
        // A million answers: the normal approximation, 3.09 standard deviations (500) out.
        let (low, high) = rank_bounds(1_000_000, 0.5, 0.001);
        assert!((498_450..498_460).contains(&low), "{low}");
        assert_eq!(low + high, 1_000_001);
        let (low, high) = rank_bounds(1_000_000, 0.9, 0.001);
        assert!((899_070..899_080).contains(&low), "{low}");
        assert!((900_920..900_935).contains(&high), "{high}");
    }

    /// Latencies of `n` answers, all in the bucket of `ms`.
    fn all_at(n: u64, ms: u64) -> Latencies {
        let mut l = Latencies::default();
        l.counts[bucket(ms * 1000)] = n;
        l
    }

    #[test]
    fn latency_clear_cases_and_reason() {
        let (fast, slow) = (all_at(100, 20), all_at(100, 60));
        assert!(LatencyComparison::of(&slow, &fast, 1.5).worse());
        assert!(!LatencyComparison::of(&fast, &slow, 1.5).worse());
        assert!(!LatencyComparison::of(&slow, &slow, 1.5).worse());
        // Within the tolerance, or a tolerance below 1.
        assert!(!LatencyComparison::of(&slow, &fast, 4.0).worse());
        assert!(!LatencyComparison::of(&fast, &fast, 0.5).worse());
        // 19 answers on either side prove nothing.
        assert!(!LatencyComparison::of(&all_at(19, 600), &fast, 1.5).worse());
        assert!(!LatencyComparison::of(&slow, &all_at(19, 1), 1.5).worse());
        assert!(LatencyComparison::of(&all_at(20, 600), &all_at(20, 1), 1.5).worse());
        // Only the slowest pages got slower (a query that lost its index): 15 % of them,
        // from 100 ms to 500 ms, the median unchanged.
        let mut tail = all_at(850, 20);
        tail.counts[bucket(500_000)] = 150;
        let mut old = all_at(850, 20);
        old.counts[bucket(100_000)] = 150;
        let c = LatencyComparison::of(&tail, &old, 1.5);
        assert!(c.worse() && c.p50_ratio < 1.0 && c.p90_ratio > 4.0, "{c:?}");
        assert!(!LatencyComparison::of(&tail, &old, 6.0).worse());

        let mut new = Latencies::default();
        for (ms, n) in [(40, 10), (61, 50), (70, 20), (140, 20)] {
            new.counts[bucket(ms * 1000)] = n;
        }
        let mut old = Latencies::default();
        for (ms, n) in [(5, 20), (19, 40), (30, 20), (45, 20)] {
            old.counts[bucket(ms * 1000)] = n;
        }
        let c = LatencyComparison::of(&new, &old, LATENCY_TOLERANCE);
        assert!(c.worse());
        // The median is surely slower beyond 1.5 x; the p90, on 100 answers, not surely.
        assert!(c.p50_ratio > 1.5 && c.p90_ratio < 1.5, "{c:?}");
        assert_eq!(
            c.describe("generation 7", "generation 6"),
            "generation 7 p50 61 ms / p90 139 ms vs generation 6 20 ms / 43 ms"
        );
        assert_eq!(Millis(Duration::from_micros(850)).to_string(), "850 µs");
        assert_eq!(Millis(Duration::from_micros(2_140)).to_string(), "2.1 ms");
        assert_eq!(Millis(Duration::from_millis(1_400)).to_string(), "1.40 s");
    }

    /// The complementary error function (Numerical Recipes' erfcc, within 1.2e-7).
    fn erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = [
            -1.265_512_23,
            1.000_023_68,
            0.374_091_96,
            0.096_784_18,
            -0.186_288_06,
            0.278_868_07,
            -1.135_203_98,
            1.488_515_87,
            -0.822_152_23,
            0.170_872_77,
        ]
        .iter()
        .rev()
        .fold(0.0, |acc, c| c + t * acc);
        let r = t * (-z * z + poly).exp();
        if x >= 0.0 { r } else { 2.0 - r }
    }

    /// P(Z < x) for a standard normal Z.
    fn phi(x: f64) -> f64 {
        0.5 * erfc(-x / std::f64::consts::SQRT_2)
    }

    /// What a page's latency looks like.
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        /// Heavy-tailed: lognormal, median 20 ms, sigma 1 (p90 72 ms, p99 205 ms).
        LogNormal,
        /// 90 % cache hits around 2 ms, 10 % misses around 80 ms (each lognormal, sigma 0.3).
        Bimodal,
    }

    impl Shape {
        /// P(latency < `us` microseconds).
        fn cdf(self, us: f64) -> f64 {
            let lognormal = |median: f64, sigma: f64| phi((us / median).ln() / sigma);
            match self {
                Shape::LogNormal => lognormal(20_000.0, 1.0),
                Shape::Bimodal => 0.9 * lognormal(2_000.0, 0.3) + 0.1 * lognormal(80_000.0, 0.3),
            }
        }
    }

    /// Draws the buckets that a shape's latencies times `factor` fall in, with exactly their
    /// probabilities (Chen and Asau's guide table over the buckets' distribution): a lookup an
    /// answer instead of a lognormal deviate, so that 10,000 canaries of thousands of answers
    /// per case run in seconds in a debug build.
    struct Sampler {
        /// P(bucket <= i).
        cdf: Vec<f64>,
        /// The first bucket whose `cdf` is above j / its length.
        guide: Vec<usize>,
    }

    impl Sampler {
        fn new(shape: Shape, factor: f64) -> Sampler {
            let cdf: Vec<f64> = (1..=BUCKETS)
                .map(|i| {
                    if i == BUCKETS {
                        1.0
                    } else {
                        shape.cdf(edge(i) as f64 / factor)
                    }
                })
                .collect();
            let cells = 1024;
            let guide = (0..cells)
                .map(|j| cdf.partition_point(|&c| c <= f64::from(j) / f64::from(cells)))
                .collect();
            Sampler { cdf, guide }
        }

        fn bucket(&self, rng: &mut Rng) -> usize {
            let u = rng.next();
            let mut i = self.guide[(u * self.guide.len() as f64) as usize];
            while self.cdf[i] <= u {
                i += 1;
            }
            i
        }
    }

    /// One of the pair of Box-Muller's normal deviates.
    fn normal(rng: &mut Rng) -> f64 {
        let (u1, u2) = (1.0 - rng.next(), rng.next());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// The sampler's buckets are where real latencies of the shape fall: their shares below
    /// each bucket edge agree with those of lognormal deviates recorded one by one (the
    /// two-sample Kolmogorov-Smirnov distance, whose 99.9 % critical value here is 0.0087).
    #[test]
    fn the_simulated_latencies_are_the_shapes() {
        let mut rng = Rng(5);
        let n = 100_000;
        for shape in SHAPES {
            let sampler = Sampler::new(shape, 1.0);
            let (mut drawn, mut real) = (Latencies::default(), Latencies::default());
            for _ in 0..n {
                drawn.counts[sampler.bucket(&mut rng)] += 1;
                let us = match shape {
                    Shape::LogNormal => 20_000.0 * normal(&mut rng).exp(),
                    Shape::Bimodal => {
                        let median = if rng.next() < 0.9 { 2_000.0 } else { 80_000.0 };
                        median * (0.3 * normal(&mut rng)).exp()
                    }
                };
                real.counts[bucket(us as u64)] += 1;
            }
            let (mut a, mut b, mut distance) = (0, 0, 0.0_f64);
            for i in 0..BUCKETS {
                a += drawn.counts[i];
                b += real.counts[i];
                distance = distance.max((a as f64 - b as f64).abs() / f64::from(n));
            }
            assert!(distance < 0.0087, "{shape:?}: {distance}");
        }
        // And the lognormal's figures: median 20 ms, p90 72.1 ms.
        let sampler = Sampler::new(Shape::LogNormal, 1.0);
        let mut l = Latencies::default();
        for _ in 0..n {
            l.counts[sampler.bucket(&mut rng)] += 1;
        }
        for (p, exact) in [(0.5, 20.0), (0.9, 72.1)] {
            let q = l.quantile(p).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            assert!((q / exact - 1.0).abs() < 0.05, "p{p}: {q} ms");
        }
    }

    /// One canary judged on latency alone: `rps` requests a second for [`SECONDS`], every
    /// third to the canary (one new worker beside two old ones), judged when [`Looks`] says,
    /// and at the end. The canary's first `cold` answers come from `cold_sampler`. The
    /// canary's answer it was called worse at, if it was.
    fn latency_canary(
        rng: &mut Rng,
        rps: u64,
        new: &Sampler,
        old: &Sampler,
        (cold, cold_sampler): (u64, &Sampler),
    ) -> Option<u64> {
        let total = rps * SECONDS;
        let (mut l_new, mut l_old) = (Latencies::default(), Latencies::default());
        let mut looks = Looks::default();
        let mut served = 0;
        for i in 0..total {
            let mut look = i + 1 == total;
            if i % 3 == 0 {
                let sampler = if served < cold { cold_sampler } else { new };
                l_new.counts[sampler.bucket(rng)] += 1;
                served += 1;
                look |= looks.due(t(served, 0));
            } else {
                l_old.counts[old.bucket(rng)] += 1;
            }
            if look && LatencyComparison::of(&l_new, &l_old, LATENCY_TOLERANCE).worse() {
                return Some(served);
            }
        }
        None
    }

    const SHAPES: [Shape; 2] = [Shape::LogNormal, Shape::Bimodal];

    /// Requests a second to the app, a third of them to the canary.
    const LATENCY_RATES: [u64; 3] = [10, 50, 250];

    /// How many of [`RUNS`] canaries whose answers take `factor` times the old generation's
    /// were called slower, at `rps`, and when (the median second, 0 if none).
    fn slower(rng: &mut Rng, shape: Shape, factor: f64, rps: u64, cold: u64) -> (u32, u64) {
        let (new, old) = (Sampler::new(shape, factor), Sampler::new(shape, 1.0));
        let cold_sampler = Sampler::new(shape, 20.0);
        let mut when: Vec<u64> = (0..RUNS)
            .filter_map(|_| latency_canary(rng, rps, &new, &old, (cold, &cold_sampler)))
            .map(|served| (served * 3).div_ceil(rps))
            .collect();
        when.sort_unstable();
        let caught = when.len() as u32;
        (caught, when.get(when.len() / 2).copied().unwrap_or(0))
    }

    #[test]
    fn a_release_as_fast_as_the_old_one_is_almost_never_called_slower() {
        let mut rng = Rng(23);
        for shape in SHAPES {
            for rps in LATENCY_RATES {
                for (factor, limit) in [(1.0, 0.001), (1.2, 0.01)] {
                    let (worse, _) = slower(&mut rng, shape, factor, rps, 0);
                    let share = f64::from(worse) / f64::from(RUNS);
                    println!(
                        "{shape:?} x{factor}: {rps} req/s, {SECONDS} s: called slower in {worse} of {RUNS} ({})",
                        Percent(share)
                    );
                    assert!(
                        share <= limit,
                        "{shape:?} x{factor} at {rps} req/s: {worse}"
                    );
                }
            }
        }
    }

    /// A new worker's first answers are slow (cold caches, connections still to open, code
    /// loaded on first use): the judge looks from the 20th, and a quantile's bounds let a few
    /// slow answers pass.
    #[test]
    fn a_cold_start_is_not_a_slower_release() {
        let mut rng = Rng(31);
        for shape in SHAPES {
            for rps in LATENCY_RATES {
                let (worse, _) = slower(&mut rng, shape, 1.0, rps, 10);
                let share = f64::from(worse) / f64::from(RUNS);
                println!(
                    "{shape:?}, the canary's first 10 answers 20x: {rps} req/s, {SECONDS} s: called slower in {worse} of {RUNS} ({})",
                    Percent(share)
                );
                assert!(share <= 0.001, "{shape:?} at {rps} req/s: {worse}");
            }
        }
    }

    #[test]
    fn a_release_three_times_slower_is_caught_from_50_requests_a_second() {
        let mut rng = Rng(29);
        for shape in SHAPES {
            for factor in [1.5, 2.0, 3.0] {
                for rps in LATENCY_RATES {
                    let (caught, median) = slower(&mut rng, shape, factor, rps, 0);
                    let share = f64::from(caught) / f64::from(RUNS);
                    println!(
                        "{shape:?} x{factor}: {rps} req/s: caught in {caught} of {RUNS} ({}) within {SECONDS} s, median after {median} s",
                        Percent(share)
                    );
                    if factor == 3.0 && rps >= 50 {
                        assert!(share >= 0.99, "{shape:?} at {rps} req/s: {share}");
                    }
                }
            }
        }
    }

    const RUNS: u32 = 10_000;
    const SECONDS: u64 = 30;

    #[test]
    fn a_release_as_good_as_the_old_one_is_almost_never_called_worse() {
        let mut rng = Rng(7);
        for rate in [0.0, 0.001, 0.01, 0.05] {
            for rps in [10, 50] {
                let worse = (0..RUNS)
                    .filter(|_| canary(&mut rng, SECONDS, rps, rate, rate).is_some())
                    .count();
                let share = worse as f64 / f64::from(RUNS);
                println!(
                    "equal error rates {}: {rps} req/s to the canary, {SECONDS} s: called worse in {worse} of {RUNS} ({})",
                    Percent(rate),
                    Percent(share)
                );
                assert!(
                    share <= 0.001,
                    "{worse} false alarms at {rate} and {rps} req/s"
                );
            }
        }
    }

    #[test]
    fn a_release_five_points_worse_is_caught_within_the_window() {
        let mut rng = Rng(11);
        for base in [0.0, 0.01, 0.05] {
            for rps in [10, 25, 50] {
                let mut when = Vec::new();
                let caught = (0..RUNS)
                    .filter_map(|_| canary(&mut rng, SECONDS, rps, base + 0.05, base))
                    .inspect(|s| when.push(*s))
                    .count();
                when.sort_unstable();
                let share = caught as f64 / f64::from(RUNS);
                println!(
                    "{} -> {}: {rps} req/s to the canary: caught in {caught} of {RUNS} ({}) within {SECONDS} s, median after {} s",
                    Percent(base),
                    Percent(base + 0.05),
                    Percent(share),
                    when.get(when.len() / 2).copied().unwrap_or(0)
                );
                if rps == 50 {
                    assert!(share >= 0.99, "{base}: caught only {share}");
                }
            }
        }
    }
}
