//! A load test as a gate (`[environments.NAME.verify.load]`): what one run measured, and the
//! rule that judges it against absolute ceilings and against the figures of the release it
//! replaces, recorded with the same config. Pure: the generator is the engine's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One request of the mix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct LoadRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The body, if any.
    pub body: Option<String>,
    /// Headers sent with it.
    pub headers: BTreeMap<String, String>,
    /// Its share of the mix.
    pub weight: u32,
}

impl LoadRequest {
    /// `POST /api/orders`.
    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// `[environments.NAME.verify.load]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadConfig {
    /// Requests per second, at a constant arrival rate.
    pub rate: u32,
    /// How long it is measured, after the warmup.
    pub duration: std::time::Duration,
    /// Sent first and not counted.
    pub warmup: std::time::Duration,
    /// The weighted mix.
    pub requests: Vec<LoadRequest>,
    /// Ceiling of the share of failed requests (5xx, no answer).
    pub max_error_rate: f64,
    /// Ceiling of the corrected p99.
    pub max_p99: Option<std::time::Duration>,
    /// Compare with the release this one replaces.
    pub compare_previous: bool,
    /// How much worse p50 or p99 may be than the previous release's.
    pub max_regression: f64,
    /// Connections held open (each sends on its own schedule, as wrk2's do).
    pub connections: u32,
}

impl LoadConfig {
    /// `GET /` at `rate` for `duration` after a second of warmup, on 64 connections, judged on
    /// errors alone: a run on demand where no gate is configured.
    pub fn get_root(rate: u32, duration: std::time::Duration) -> LoadConfig {
        LoadConfig {
            rate,
            duration,
            warmup: std::time::Duration::from_secs(1),
            requests: vec![LoadRequest {
                method: "GET".into(),
                path: "/".into(),
                body: None,
                headers: BTreeMap::new(),
                weight: 1,
            }],
            max_error_rate: 0.001,
            max_p99: None,
            compare_previous: false,
            max_regression: 0.15,
            connections: 64,
        }
    }

    /// What makes two runs comparable: the rate, durations, mix and connections. A change of a
    /// ceiling does not change it.
    pub fn fingerprint(&self) -> String {
        let shape = serde_json::json!({
            "rate": self.rate,
            "duration_ms": self.duration.as_millis() as u64,
            "warmup_ms": self.warmup.as_millis() as u64,
            "requests": self.requests,
            "connections": self.connections,
        });
        crate::secret::hash(&shape.to_string())
            .chars()
            .take(16)
            .collect()
    }
}

/// What one run measured. Latencies are from each request's intended send time, so a stall
/// of the app is not hidden by the generator waiting for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct LoadFigures {
    /// The rate asked for, per second.
    pub rate: f64,
    /// The rate at which requests were sent in the measured window.
    pub achieved_rate: f64,
    /// Requests scheduled in the measured window.
    pub scheduled: u64,
    /// Requests sent in it.
    pub sent: u64,
    /// Of them, answered (any status).
    pub answered: u64,
    /// Failed requests by what failed: a status (`500`), `connect` or `timeout`.
    pub errors: BTreeMap<String, u64>,
    /// Per request of the mix: sent and failed.
    pub by_request: BTreeMap<String, (u64, u64)>,
    /// Corrected latency quantiles, in milliseconds.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
    /// The distribution, for plotting: (quantile, milliseconds) at fixed quantiles.
    pub distribution: Vec<(f64, f64)>,
    /// Requests sent more than 10 ms after their intended time because the generator itself
    /// was late (not the app: a connection busy with an answer is the app's time).
    pub sent_late: u64,
}

impl LoadFigures {
    /// Failed requests over sent.
    pub fn error_rate(&self) -> f64 {
        let failed: u64 = self.errors.values().sum();
        if self.sent == 0 {
            0.0
        } else {
            failed as f64 / self.sent as f64
        }
    }
}

/// What a run proves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "why", rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum LoadVerdict {
    /// Within every ceiling and not slower than the previous release.
    Pass(String),
    /// Over a ceiling, or slower than the previous release.
    Fail(String),
    /// The generator did not keep the rate: nothing is proven.
    Inconclusive(String),
}

/// Latency differences below this never count as a regression: too small to be the release's.
pub const REGRESSION_FLOOR_MS: f64 = 2.0;

/// Judges `now` against the config's ceilings and, when comparable, the previous release's
/// figures. A failure proven by what was measured stands even when the rate was not kept (the
/// requests not sent would only have waited longer); a pass needs the rate.
pub fn judge(now: &LoadFigures, previous: Option<&LoadFigures>, cfg: &LoadConfig) -> LoadVerdict {
    let mut failures = Vec::new();
    let rate = now.error_rate();
    if rate > cfg.max_error_rate {
        let worst = now
            .by_request
            .iter()
            .filter(|(_, (_, failed))| *failed > 0)
            .max_by(|a, b| {
                let share = |(sent, failed): &(u64, u64)| *failed as f64 / (*sent).max(1) as f64;
                share(a.1).total_cmp(&share(b.1))
            })
            .map(|(label, (sent, failed))| format!("; {label}: {failed} of {sent} failed"))
            .unwrap_or_default();
        let kinds: Vec<String> = now
            .errors
            .iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect();
        failures.push(format!(
            "error rate {:.3}% is over max_error_rate {:.3}% ({}){worst}",
            rate * 100.0,
            cfg.max_error_rate * 100.0,
            kinds.join(", ")
        ));
    }
    if let Some(max) = cfg.max_p99
        && now.p99_ms > max.as_secs_f64() * 1000.0
    {
        failures.push(format!(
            "p99 {:.1} ms is over max_p99 {:.0} ms",
            now.p99_ms,
            max.as_secs_f64() * 1000.0
        ));
    }
    let mut compared =
        "no previous figures with this config: judged on the ceilings only".to_owned();
    if let Some(prev) = previous {
        compared = format!(
            "against the previous release: p50 {:.1} vs {:.1} ms, p99 {:.1} vs {:.1} ms",
            now.p50_ms, prev.p50_ms, now.p99_ms, prev.p99_ms
        );
        for (what, a, b) in [
            ("p50", now.p50_ms, prev.p50_ms),
            ("p99", now.p99_ms, prev.p99_ms),
        ] {
            if a - b > REGRESSION_FLOOR_MS && a > b * (1.0 + cfg.max_regression) {
                failures.push(format!(
                    "{what} {a:.1} ms is {:.0}% worse than the previous release's {b:.1} ms (max_regression {:.0}%)",
                    (a / b.max(1e-9) - 1.0) * 100.0,
                    cfg.max_regression * 100.0
                ));
            }
        }
    }
    if !failures.is_empty() {
        return LoadVerdict::Fail(format!("{}; {compared}", failures.join("; ")));
    }
    if now.achieved_rate < now.rate * 0.95 || now.sent_late * 20 > now.sent.max(1) {
        return LoadVerdict::Inconclusive(format!(
            "the generator sent {:.0} req/s of the {:.0} asked ({} of {} requests, {} late): the rate was not kept, so nothing is proven; lower the rate or use more connections",
            now.achieved_rate, now.rate, now.sent, now.scheduled, now.sent_late
        ));
    }
    LoadVerdict::Pass(compared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LoadConfig {
        LoadConfig {
            max_p99: Some(std::time::Duration::from_millis(150)),
            compare_previous: true,
            connections: 16,
            ..LoadConfig::get_root(100, std::time::Duration::from_secs(10))
        }
    }

    fn figures(p50: f64, p99: f64) -> LoadFigures {
        LoadFigures {
            rate: 100.0,
            achieved_rate: 100.0,
            scheduled: 1000,
            sent: 1000,
            answered: 1000,
            p50_ms: p50,
            p90_ms: p50,
            p99_ms: p99,
            max_ms: p99,
            ..Default::default()
        }
    }

    #[test]
    fn a_slower_release_fails_naming_both_and_the_same_speed_passes() {
        let prev = figures(10.0, 20.0);
        let slow = figures(30.0, 60.0);
        match judge(&slow, Some(&prev), &cfg()) {
            LoadVerdict::Fail(why) => {
                assert!(
                    why.contains("p99 60.0 ms is 200% worse than the previous release's 20.0 ms"),
                    "{why}"
                )
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            judge(&figures(10.5, 21.0), Some(&prev), &cfg()),
            LoadVerdict::Pass(_)
        ));
        // Under the floor: a millisecond is not a regression.
        assert!(matches!(
            judge(&figures(1.0, 2.0), Some(&figures(0.5, 1.0)), &cfg()),
            LoadVerdict::Pass(_)
        ));
    }

    #[test]
    fn errors_name_the_request_and_a_rate_not_kept_is_never_a_pass() {
        let mut f = figures(10.0, 20.0);
        f.errors.insert("500".into(), 10);
        f.by_request.insert("POST /api/orders".into(), (200, 10));
        f.by_request.insert("GET /".into(), (800, 0));
        match judge(&f, None, &cfg()) {
            LoadVerdict::Fail(why) => {
                assert!(why.contains("POST /api/orders: 10 of 200 failed"), "{why}")
            }
            v => panic!("{v:?}"),
        }
        let mut short = figures(10.0, 20.0);
        short.achieved_rate = 50.0;
        assert!(matches!(
            judge(&short, None, &cfg()),
            LoadVerdict::Inconclusive(_)
        ));
        // A failure stands even at the lower rate.
        short.p99_ms = 500.0;
        assert!(matches!(judge(&short, None, &cfg()), LoadVerdict::Fail(_)));
    }
}
