//! The judgement of a canary step: the canary's requests against the stable release's in the
//! same window. Errors by one-sided exact tests (Fisher's against the stable side, a binomial one
//! against the canary's own ceiling), so that error rates that are mostly zero are handled; latency
//! by Mann-Whitney U and the p50 and p99 ratios. Too few requests on either side is inconclusive:
//! never a pass, never a failure. Pure functions, tested on numbers (issue 30).

/// What one side (the canary or the stable release) answered in a step's window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Side {
    /// Responses.
    pub requests: u64,
    /// 5xx responses among them.
    pub errors: u64,
    /// A sample of their latencies, in milliseconds (bounded by whoever collects them).
    pub latencies_ms: Vec<f64>,
}

impl Side {
    /// The share of errors, 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// How a step is judged (`[environments.NAME.canary]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Fewer requests than this on either side: inconclusive.
    pub min_requests: u64,
    /// The canary's own ceiling of errors, whatever the stable side does.
    pub max_error_rate: f64,
    /// Slower than the stable side by more than this share (p50 or p99): a failure.
    pub max_latency_increase: f64,
    /// How sure a failure must be, for the whole rollout (0.98: at most 2% of rollouts of a
    /// release as good as the stable one fail).
    pub confidence: f64,
}

/// Every figure a judgement was made on, as recorded in the step's gate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Requests of the canary and the stable side.
    pub requests: (u64, u64),
    /// Their error rates.
    pub error_rates: (f64, f64),
    /// Their p50 latencies, ms.
    pub p50_ms: (Option<f64>, Option<f64>),
    /// Their p99 latencies, ms.
    pub p99_ms: (Option<f64>, Option<f64>),
    /// Fisher's one-sided p-value that the canary errs more than the stable side.
    pub p_errors: f64,
    /// The binomial one-sided p-value that the canary errs more than its ceiling.
    pub p_ceiling: f64,
    /// Mann-Whitney's U of the canary's latencies over the stable side's, and its one-sided
    /// p-value that the canary is slower.
    pub u: f64,
    /// See `u`.
    pub p_latency: f64,
    /// The p-value below which a test fails (the rollout's `1 - confidence`, shared out).
    pub alpha: f64,
}

/// The outcome of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The canary may take the next step.
    Pass(Figures),
    /// The canary is worse: the rollout aborts, naming why.
    Fail(Figures, String),
    /// Too little to judge: the rollout holds at its weight, saying why.
    Inconclusive(Figures, String),
}

/// A canary's p50 is slower only when it exceeds the stable side's by more than this many
/// milliseconds, besides `max_latency_increase`: a process that gets 5% of the requests answers
/// a little slower than one that gets 95% (its caches are colder), whatever its release.
pub const LATENCY_FLOOR_MS: f64 = 1.0;
/// The same for the p99, whose tail varies more with that load.
pub const P99_FLOOR_MS: f64 = 5.0;

/// The p99 of each side is compared once both have this many latencies in the step (ten of
/// them above it).
pub const P99_MIN_SAMPLES: usize = 1000;

/// How much stricter a look during a step is than the judgement at its end: a step is looked at
/// about once a second, and those looks together must not make a good canary fail more often.
pub const INTERIM_STRICTNESS: f64 = 100.0;

/// A look during a step, before its end: a failure only, of the canary's errors (against its
/// ceiling, or against the stable side), at a hundredth of the step's alpha. A canary failing
/// half its requests is stopped within a second or two of meeting its first users, instead of
/// at the end of its step; anything short of that waits for the step's judgement.
pub fn interim(
    canary: &Side,
    stable: &Side,
    rules: &Rules,
    steps: usize,
) -> Option<(Figures, String)> {
    if canary.errors == 0 {
        return None;
    }
    // Its own ceiling is judged on any number of requests, the comparison with the stable side
    // on as many as the end of the step needs; latency is left to the step's end.
    let strict = Rules {
        confidence: 1.0 - (1.0 - rules.confidence) / INTERIM_STRICTNESS,
        max_latency_increase: f64::INFINITY,
        ..*rules
    };
    match judge(canary, stable, &strict, steps) {
        Decision::Fail(f, why) => Some((f, why)),
        _ => None,
    }
}

/// Judges one step of a rollout that has `steps` judged steps in all: each of its three tests
/// (errors against the stable side, errors against the ceiling, latency) is held to a share of
/// `1 - confidence`, so that a canary as good as the stable release fails at most that often
/// over the whole rollout.
pub fn judge(canary: &Side, stable: &Side, rules: &Rules, steps: usize) -> Decision {
    let alpha = (1.0 - rules.confidence).max(0.0) / (3 * steps.max(1)) as f64;
    let mut figures = Figures {
        requests: (canary.requests, stable.requests),
        error_rates: (canary.error_rate(), stable.error_rate()),
        alpha,
        p_errors: 1.0,
        p_ceiling: 1.0,
        p_latency: 1.0,
        ..Figures::default()
    };
    let (c, s) = (sorted(&canary.latencies_ms), sorted(&stable.latencies_ms));
    figures.p50_ms = (quantile(&c, 0.5), quantile(&s, 0.5));
    figures.p99_ms = (quantile(&c, 0.99), quantile(&s, 0.99));
    let short = rules
        .min_requests
        .saturating_sub(canary.requests.min(stable.requests));
    let percent = |r: f64| format!("{:.2}%", r * 100.0);
    if short > 0 {
        // Too few to compare the sides; but a canary whose own errors already prove it is over
        // its ceiling fails on that data rather than hurting users while it waits for more.
        if canary.errors > 0 {
            figures.p_ceiling =
                binomial_greater(canary.errors, canary.requests, rules.max_error_rate);
            if figures.p_ceiling < alpha {
                let why = format!(
                    "the canary's error rate {} ({} of {} requests) is above its ceiling {} already (binomial p = {:.2e} < {alpha:.2e})",
                    percent(figures.error_rates.0),
                    canary.errors,
                    canary.requests,
                    percent(rules.max_error_rate),
                    figures.p_ceiling
                );
                return Decision::Fail(figures, why);
            }
        }
        let which = if canary.requests < stable.requests {
            "the canary"
        } else {
            "the stable release"
        };
        return Decision::Inconclusive(
            figures,
            format!(
                "waiting for {short} more requests to {which} (at least {} on each side)",
                rules.min_requests
            ),
        );
    }
    figures.p_errors = fisher_greater(
        canary.errors,
        canary.requests,
        stable.errors,
        stable.requests,
    );
    figures.p_ceiling = binomial_greater(canary.errors, canary.requests, rules.max_error_rate);
    let (u, p) = mann_whitney_greater(&c, &s);
    figures.u = u;
    figures.p_latency = p;
    if figures.p_ceiling < alpha {
        let why = format!(
            "the canary's error rate {} is above its ceiling {} (binomial p = {:.2e} < {alpha:.2e})",
            percent(figures.error_rates.0),
            percent(rules.max_error_rate),
            figures.p_ceiling
        );
        return Decision::Fail(figures, why);
    }
    if figures.p_errors < alpha {
        let why = format!(
            "the canary's error rate {} is above the stable release's {} (Fisher p = {:.2e} < {alpha:.2e})",
            percent(figures.error_rates.0),
            percent(figures.error_rates.1),
            figures.p_errors
        );
        return Decision::Fail(figures, why);
    }
    // Slower by the share allowed, and by more than the floor: a tenth of a millisecond more
    // on a sub-millisecond answer is noise, whatever its ratio.
    let ratio = |a: Option<f64>, b: Option<f64>, floor: f64| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a - b > floor => Some(a / b),
        _ => None,
    };
    let limit = 1.0 + rules.max_latency_increase;
    let slower = [
        (
            "p50",
            ratio(figures.p50_ms.0, figures.p50_ms.1, LATENCY_FLOOR_MS),
        ),
        (
            "p99",
            // A p99 of fewer latencies rests on a handful of requests (a cold connection, one
            // scheduling hiccup of a process that gets 5% of the traffic): not judged.
            ratio(figures.p99_ms.0, figures.p99_ms.1, P99_FLOOR_MS)
                .filter(|_| c.len().min(s.len()) >= P99_MIN_SAMPLES),
        ),
    ]
    .into_iter()
    .find_map(|(q, r)| r.filter(|r| *r > limit).map(|r| (q, r)));
    if let Some((q, r)) = slower
        && figures.p_latency < alpha
    {
        let why = format!(
            "the canary is slower: its {q} is {r:.2}× the stable release's, over the {limit:.2}× allowed (Mann-Whitney U = {u:.1}, p = {:.2e} < {alpha:.2e})",
            figures.p_latency
        );
        return Decision::Fail(figures, why);
    }
    Decision::Pass(figures)
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile of sorted values (nearest rank), None when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// ln(n!), exactly summed for small n, by Stirling's series beyond.
fn ln_factorial(n: u64) -> f64 {
    if n < 256 {
        return (2..=n).map(|k| (k as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x.powi(3))
        + 1.0 / (1260.0 * x.powi(5))
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// Fisher's exact test, one-sided: the p-value that the first side's error proportion (`a` of
/// `n1`) is greater than the second's (`c` of `n2`), as SciPy's `fisher_exact(...,
/// alternative="greater")` on `[[a, n1 - a], [c, n2 - c]]`.
pub fn fisher_greater(a: u64, n1: u64, c: u64, n2: u64) -> f64 {
    let errors = a + c;
    let total = n1 + n2;
    if total == 0 || errors == 0 {
        return 1.0;
    }
    let ln_all = ln_choose(total, errors);
    let top = errors.min(n1);
    let mut p = 0.0;
    for x in a..=top {
        if errors - x > n2 {
            continue;
        }
        p += (ln_choose(n1, x) + ln_choose(n2, errors - x) - ln_all).exp();
    }
    p.min(1.0)
}

/// The exact binomial test, one-sided: the p-value of `k` or more errors of `n` where each
/// errs with probability `rate`.
pub fn binomial_greater(k: u64, n: u64, rate: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if rate <= 0.0 {
        return 0.0;
    }
    if rate >= 1.0 {
        return 1.0;
    }
    let (lp, lq) = (rate.ln(), (1.0 - rate).ln());
    let p: f64 = (k..=n)
        .map(|x| (ln_choose(n, x) + x as f64 * lp + (n - x) as f64 * lq).exp())
        .sum();
    p.min(1.0)
}

/// Mann-Whitney U of `a` over `b` (both sorted), and the one-sided p-value that `a` tends to
/// be greater (slower), by the normal approximation with the tie and continuity corrections, as
/// SciPy's `mannwhitneyu(a, b, alternative="greater", method="asymptotic")`.
pub fn mann_whitney_greater(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return (0.0, 1.0);
    }
    // Ranks of the pooled values, ties sharing their mean rank.
    let mut pooled: Vec<(f64, bool)> = a
        .iter()
        .map(|x| (*x, true))
        .chain(b.iter().map(|x| (*x, false)))
        .collect();
    pooled.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = pooled.len();
    let (mut rank_sum_a, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_a += pooled[i..=j].iter().filter(|p| p.1).count() as f64 * mean_rank;
        i = j + 1;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_a - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((nf + 1.0) - ties / (nf * (nf - 1.0)));
    if var <= 0.0 {
        return (u, 1.0);
    }
    let z = (u - mean - 0.5) / var.sqrt();
    (u, normal_upper(z))
}

/// P(Z > z) for a standard normal Z.
fn normal_upper(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// One step of a rollout (`steps = ["5%", "pause", "mirror 10%", "50%"]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// This share of the requests (percent, above 0 and below 100) goes to the canary.
    Weight(f64),
    /// Waits for `shipgate canary resume`, at the weight before it.
    Pause,
    /// Copies of this share of the idempotent requests go to the canary; users meet only the
    /// stable release.
    Mirror(f64),
}

impl Step {
    /// Parses a step as the config writes it; says what is wrong otherwise.
    pub fn parse(s: &str) -> Result<Step, String> {
        let percent = |t: &str| -> Result<f64, String> {
            let n: f64 = t
                .trim()
                .strip_suffix('%')
                .ok_or_else(|| format!("`{s}`: write a share as a percent, like \"5%\""))?
                .trim()
                .parse()
                .map_err(|_| format!("`{s}`: write a share as a percent, like \"5%\""))?;
            if n > 0.0 && n < 100.0 {
                Ok(n)
            } else {
                Err(format!(
                    "`{s}`: a step's share is above 0% and below 100% (100% comes after the last step)"
                ))
            }
        };
        match s.trim() {
            "pause" => Ok(Step::Pause),
            t => match t.strip_prefix("mirror ") {
                Some(rest) => percent(rest).map(Step::Mirror),
                None => percent(t).map(Step::Weight),
            },
        }
    }

    /// Whether the step's end is judged (a pause is not).
    pub fn judged(self) -> bool {
        !matches!(self, Step::Pause)
    }
}

/// How a client is kept on one side for the whole rollout (`sticky`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// The `shipgate-canary` cookie, which the router gives a client that has none.
    #[default]
    Cookie,
    /// The value of this request header (a user id, a session), hashed.
    Header(String),
    /// Each request is drawn on its own.
    None,
}

impl Sticky {
    /// Parses `"cookie"`, `"header:NAME"` or `"none"`; says what is wrong otherwise.
    pub fn parse(s: &str) -> Result<Sticky, String> {
        match s.trim() {
            "cookie" => Ok(Sticky::Cookie),
            "none" => Ok(Sticky::None),
            t => match t.strip_prefix("header:").map(str::trim) {
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    Ok(Sticky::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "`{s}`: write \"cookie\", \"header:NAME\" (a request header such as \"header:x-user-id\") or \"none\""
                )),
            },
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// At step `n` (0-based) of the steps.
    At(usize),
    /// Held at step `n`: its judgement was inconclusive, or it is a pause.
    Held(usize),
    /// Every step passed: the canary takes every request.
    Completed,
    /// Ended: the canary takes no request.
    Aborted,
}

/// What a step's outcome (or a person) does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The step's judgement passed.
    Passed,
    /// The step's judgement failed, or someone aborted it.
    Abort,
    /// The step's judgement was inconclusive.
    Inconclusive,
    /// `shipgate canary resume` (a pause, or an inconclusive hold, goes on).
    Resume,
    /// `shipgate canary skip`: every request to the canary at once.
    Skip,
}

/// The rollout's next stage after `mv` at `stage`, over `steps`.
pub fn next(steps: &[Step], stage: Stage, mv: Move) -> Stage {
    let after = |n: usize| {
        if n + 1 >= steps.len() {
            Stage::Completed
        } else {
            Stage::At(n + 1)
        }
    };
    match (stage, mv) {
        (Stage::Completed | Stage::Aborted, _) => stage,
        (_, Move::Abort) => Stage::Aborted,
        (_, Move::Skip) => Stage::Completed,
        // A pause goes on only when a person resumes it.
        (Stage::At(n), Move::Passed) if steps.get(n) != Some(&Step::Pause) => after(n),
        (Stage::At(n), Move::Inconclusive) => Stage::Held(n),
        (Stage::Held(n), Move::Resume | Move::Passed) => after(n),
        (Stage::At(n), Move::Resume) if steps.get(n) == Some(&Step::Pause) => after(n),
        (s, _) => s,
    }
}

/// The share of users' requests the canary takes at `stage`, in percent: a pause or a mirror
/// keeps the weight of the last weight step before it (0 before any).
pub fn weight(steps: &[Step], stage: Stage) -> f64 {
    let at = match stage {
        Stage::Completed => return 100.0,
        Stage::Aborted => return 0.0,
        Stage::At(n) | Stage::Held(n) => n,
    };
    steps[..=at.min(steps.len().saturating_sub(1))]
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::Weight(w) => Some(*w),
            _ => None,
        })
        .unwrap_or(0.0)
}

/// Which side a request goes to at `weight` percent: a tester's `x-shipgate-canary: always`
/// or `never` first, then the request's pin (its cookie or header value, hashed, so it stays
/// on its side as the weight grows), or `roll` (a uniform draw in 0..1) when it has none.
pub fn to_canary(weight: f64, asked: Option<&str>, pin: Option<&str>, roll: f64) -> bool {
    match asked {
        Some("always") => return true,
        Some("never") => return false,
        _ => {}
    }
    let point = match pin {
        Some(p) => {
            (murmur3::murmur3_32(&mut std::io::Cursor::new(p.as_bytes()), 0x5417_6a7e).unwrap_or(0)
                as f64)
                / (u32::MAX as f64 + 1.0)
        }
        None => roll,
    };
    point * 100.0 < weight
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) {
        assert!(
            (got - want).abs() <= rel * want.abs().max(1e-300),
            "got {got:e}, want {want:e}"
        );
    }

    /// Reference values from SciPy 1.x: `fisher_exact([[a, n1-a], [c, n2-c]],
    /// alternative="greater").pvalue`.
    #[test]
    fn too_few_requests_hold_unless_the_canary_is_over_its_ceiling_already() {
        let rules = Rules {
            min_requests: 100,
            max_error_rate: 0.01,
            max_latency_increase: 0.25,
            confidence: 0.98,
        };
        let side = |requests, errors| Side {
            requests,
            errors,
            latencies_ms: vec![1.0; requests as usize],
        };
        let stable = side(1000, 0);
        match judge(&side(65, 32), &stable, &rules, 3) {
            Decision::Fail(_, why) => assert!(why.contains("32 of 65 requests"), "{why}"),
            d => panic!("{d:?}"),
        }
        for (n, e) in [(65, 1), (0, 0), (40, 0)] {
            assert!(
                matches!(
                    judge(&side(n, e), &stable, &rules, 3),
                    Decision::Inconclusive(..)
                ),
                "{n} {e}"
            );
        }
    }

    #[test]
    fn a_sub_millisecond_difference_is_never_slower() {
        let rules = Rules {
            min_requests: 100,
            max_error_rate: 0.01,
            max_latency_increase: 0.25,
            confidence: 0.98,
        };
        let side = |ms: f64| Side {
            requests: 2000,
            errors: 0,
            latencies_ms: vec![ms; 2000],
        };
        // A p99 ten times the stable one, on 500 requests: five slow ones, not judged.
        let mut few = side(0.5);
        few.requests = 500;
        few.latencies_ms = vec![0.5; 495];
        few.latencies_ms.extend([10.0; 5]);
        assert!(matches!(
            judge(&few, &side(0.5), &rules, 3),
            Decision::Pass(_)
        ));
        // 0.5 ms against 0.3 ms: 1.67×, certain, and still under a millisecond apart.
        assert!(matches!(
            judge(&side(0.5), &side(0.3), &rules, 3),
            Decision::Pass(_)
        ));
        assert!(matches!(
            judge(&side(3.0), &side(1.0), &rules, 3),
            Decision::Fail(..)
        ));
    }

    #[test]
    fn a_look_during_a_step_fails_only_a_canary_that_errs_beyond_doubt() {
        let rules = Rules {
            min_requests: 100,
            max_error_rate: 0.01,
            max_latency_increase: 0.25,
            confidence: 0.98,
        };
        let side = |requests: u64, errors: u64, ms: f64| Side {
            requests,
            errors,
            latencies_ms: vec![ms; requests as usize],
        };
        let stable = side(200, 0, 1.0);
        // Five failures in its first ten requests: stopped at once.
        let (_, why) = interim(&side(10, 5, 1.0), &stable, &rules, 3).unwrap();
        assert!(why.contains("above its ceiling"), "{why}");
        // One failure in ten, or a slow canary: left to the end of the step.
        assert_eq!(interim(&side(10, 1, 1.0), &stable, &rules, 3), None);
        assert_eq!(
            interim(&side(2000, 0, 50.0), &side(2000, 0, 1.0), &rules, 3),
            None
        );
        // A canary as good as the stable side, looked at 20 times in each of three steps of 200
        // rollouts, still fails at most 2% of them.
        let mut rng = Rng(7);
        let failed = (0..200)
            .filter(|_| {
                let (mut c, mut s) = (side(0, 0, 1.0), side(0, 0, 1.0));
                (0..60).any(|_| {
                    for _ in 0..5 {
                        c.requests += 1;
                        c.errors += u64::from(rng.unit() < 0.005);
                    }
                    for _ in 0..95 {
                        s.requests += 1;
                        s.errors += u64::from(rng.unit() < 0.005);
                    }
                    interim(&c, &s, &rules, 3).is_some()
                })
            })
            .count();
        assert!(failed <= 4, "{failed} of 200 good canaries failed a look");
    }

    #[test]
    fn fisher_matches_scipy() {
        for (a, n1, c, n2, want) in [
            (5, 100, 1, 1000, 3.151_040_092_260_627e-5),
            (0, 100, 0, 1000, 1.0),
            (3, 50, 10, 2000, 0.003_288_380_787_173_806_6),
            (30, 500, 20, 2000, 4.210_779_963_271_839e-10),
            (1, 10, 0, 10, 0.5),
            (12, 400, 40, 9600, 6.876_044_556_891_661e-7),
        ] {
            close(fisher_greater(a, n1, c, n2), want, 1e-6);
        }
    }

    /// Reference values from SciPy 1.x: `mannwhitneyu(a, b, alternative="greater",
    /// method="asymptotic")`.
    #[test]
    fn mann_whitney_matches_scipy() {
        let (u, p) = mann_whitney_greater(
            &sorted(&[2.5, 3.5, 4.5, 5.5, 6.5, 7.5]),
            &sorted(&[1.0, 2.0, 3.0, 4.0, 5.0]),
        );
        assert_eq!(u, 24.0);
        close(p, 0.060_345_400_263_722_78, 1e-5);
        let c: Vec<f64> = [1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 4.0].repeat(5);
        let d: Vec<f64> = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0].repeat(5);
        let (u, p) = mann_whitney_greater(&sorted(&d), &sorted(&c));
        assert_eq!(u, 1025.0);
        close(p, 0.012_384_066_282_063_831, 1e-5);
    }

    #[test]
    fn the_binomial_tail_is_exact() {
        // P(X >= 2) for n = 10, p = 0.1: 1 - 0.9^10 - 10 * 0.1 * 0.9^9.
        let want = 1.0 - 0.9f64.powi(10) - 10.0 * 0.1 * 0.9f64.powi(9);
        close(binomial_greater(2, 10, 0.1), want, 1e-9);
        assert_eq!(binomial_greater(0, 10, 0.1), 1.0);
    }

    /// A small, seeded generator (xorshift64*), so the simulations are the same every run.
    struct Rng(u64);

    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }

        /// A side of `n` requests erring with probability `rate`, latencies exponential around
        /// `mean_ms` (a sample of at most 500 kept).
        fn side(&mut self, n: u64, rate: f64, mean_ms: f64) -> Side {
            let errors = (0..n).filter(|_| self.unit() < rate).count() as u64;
            let latencies_ms = (0..n.min(500))
                .map(|_| -mean_ms * (1.0 - self.unit()).ln())
                .collect();
            Side {
                requests: n,
                errors,
                latencies_ms,
            }
        }
    }

    const RULES: Rules = Rules {
        min_requests: 100,
        max_error_rate: 0.01,
        max_latency_increase: 0.25,
        confidence: 0.98,
    };

    /// One rollout of three steps (5%, 25%, 50% of 4,000 requests a step): whether it failed.
    fn rollout(rng: &mut Rng, canary_rate: f64, canary_ms: f64) -> bool {
        [0.05, 0.25, 0.5].iter().any(|share| {
            let n = 4000.0;
            let canary = rng.side((n * share) as u64, canary_rate, canary_ms);
            let stable = rng.side((n * (1.0 - share)) as u64, 0.002, 20.0);
            matches!(judge(&canary, &stable, &RULES, 3), Decision::Fail(..))
        })
    }

    #[test]
    fn a_canary_as_good_as_the_stable_release_rarely_fails() {
        let mut rng = Rng(0x5eed_0001);
        let failed = (0..200).filter(|_| rollout(&mut rng, 0.002, 20.0)).count();
        eprintln!("canary A/A: {failed} of 200 rollouts failed");
        assert!(failed <= 4, "{failed} of 200 A/A rollouts failed");
    }

    #[test]
    fn a_canary_that_errs_or_is_slower_fails() {
        let mut rng = Rng(0x5eed_0002);
        let erring = (0..200).filter(|_| rollout(&mut rng, 0.052, 20.0)).count();
        assert!(
            erring >= 190,
            "{erring} of 200 rollouts of +5 points failed"
        );
        let slow = (0..200).filter(|_| rollout(&mut rng, 0.002, 30.0)).count();
        eprintln!("canary A/B: {erring} of 200 failed (+5 points), {slow} of 200 (+50% latency)");
        assert!(slow >= 190, "{slow} of 200 rollouts of +50% latency failed");
    }

    #[test]
    fn too_few_requests_is_inconclusive_never_a_verdict() {
        // Slower a hundredfold, but on 40 requests: latency is never judged on so few.
        let canary = Side {
            requests: 40,
            errors: 0,
            latencies_ms: vec![1000.0; 40],
        };
        let stable = Side {
            requests: 5000,
            errors: 0,
            latencies_ms: vec![10.0; 500],
        };
        match judge(&canary, &stable, &RULES, 3) {
            Decision::Inconclusive(_, why) => {
                assert_eq!(
                    why,
                    "waiting for 60 more requests to the canary (at least 100 on each side)"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(&Side::default(), &Side::default(), &RULES, 3),
            Decision::Inconclusive(..)
        ));
    }

    #[test]
    fn steps_parse_as_the_config_writes_them_and_say_what_is_wrong() {
        assert_eq!(Step::parse("5%"), Ok(Step::Weight(5.0)));
        assert_eq!(Step::parse("pause"), Ok(Step::Pause));
        assert_eq!(Step::parse("mirror 10%"), Ok(Step::Mirror(10.0)));
        assert!(Step::parse("100%").unwrap_err().contains("below 100%"));
        assert!(Step::parse("five").unwrap_err().contains("like \"5%\""));
    }

    #[test]
    fn a_rollout_walks_its_steps_holds_when_unsure_and_ends_at_0_or_100() {
        let steps = [
            Step::Weight(5.0),
            Step::Pause,
            Step::Mirror(10.0),
            Step::Weight(50.0),
        ];
        let mut stage = Stage::At(0);
        assert_eq!(weight(&steps, stage), 5.0);
        stage = next(&steps, stage, Move::Inconclusive);
        assert_eq!(stage, Stage::Held(0));
        assert_eq!(weight(&steps, stage), 5.0, "held at its weight");
        stage = next(&steps, stage, Move::Passed);
        assert_eq!(stage, Stage::At(1));
        assert_eq!(
            next(&steps, stage, Move::Passed),
            Stage::At(1),
            "a pause waits"
        );
        stage = next(&steps, stage, Move::Resume);
        assert_eq!(
            (stage, weight(&steps, stage)),
            (Stage::At(2), 5.0),
            "a mirror keeps 5%"
        );
        stage = next(&steps, next(&steps, stage, Move::Passed), Move::Passed);
        assert_eq!(stage, Stage::Completed);
        assert_eq!(weight(&steps, stage), 100.0);
        assert_eq!(next(&steps, stage, Move::Abort), Stage::Completed);
        assert_eq!(weight(&steps, next(&steps, Stage::At(3), Move::Abort)), 0.0);
        assert_eq!(next(&steps, Stage::Held(1), Move::Skip), Stage::Completed);
    }

    #[test]
    fn the_split_keeps_its_share_pins_clients_and_obeys_testers() {
        let mut rng = Rng(0x5eed_0003);
        let n = 10_000;
        let share = (0..n)
            .filter(|_| to_canary(5.0, None, None, rng.unit()))
            .count();
        assert!((450..=550).contains(&share), "{share} of {n} at 5%");
        // A pinned client on the canary at 5% stays there at 25% and 50%.
        let pinned: Vec<String> = (0..n).map(|i| format!("client-{i}")).collect();
        let at = |w: f64| -> Vec<bool> {
            pinned
                .iter()
                .map(|p| to_canary(w, None, Some(p), 0.0))
                .collect()
        };
        let (five, half) = (at(5.0), at(50.0));
        let pinned_share = five.iter().filter(|c| **c).count();
        assert!((350..=650).contains(&pinned_share), "{pinned_share}");
        assert!(five.iter().zip(&half).all(|(a, b)| !*a || *b));
        assert!(to_canary(0.0, Some("always"), Some("x"), 0.0));
        assert!(!to_canary(100.0, Some("never"), None, 0.0));
    }
}
