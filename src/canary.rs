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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    pub fn churn(&self, exits: u64, watched: std::time::Duration) {
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
                "had {} process{} end inside its workers in {} worker-seconds (an app server's master restarting what crashed), {old} {} in {}",
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
            "had 7 processes end inside its workers in 30 worker-seconds (an app server's master restarting what crashed), generation 6 0 in 90"
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
