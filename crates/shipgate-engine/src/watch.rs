//! `verify.watch`: after the switch, the router's figures for the new release (and its
//! instance's health) are watched; `shipgate_core::gate::judge` decides.

use std::time::Duration;

use shipgate_core::gate::{Inconclusive, Stage, WatchFigures, WatchVerdict, judge};
use shipgate_proxy::{LATENCY_BUCKETS_MS, Router, UpstreamMetrics};
use shipgate_store::Promotion;

use crate::{Engine, EngineError, LiveInstance};

/// How often the figures are looked at during a watch.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Cumulative counters of one release at one moment.
#[derive(Debug, Clone, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    /// Cumulative latency bucket counts, one per bound of [`LATENCY_BUCKETS_MS`], then `+Inf`.
    buckets: Vec<u64>,
}

impl Counters {
    fn of(router: &Router, app: &str, label: &str) -> Self {
        router
            .metrics()
            .iter()
            .find(|m| m.app == app && m.label == label)
            .map_or_else(Self::default, Self::from_metrics)
    }

    fn from_metrics(m: &UpstreamMetrics) -> Self {
        let mut buckets: Vec<u64> = m.latency.buckets.iter().map(|b| b.count).collect();
        buckets.push(m.latency.count);
        Self {
            requests: m.requests.total(),
            errors: m.requests.server_error,
            buckets,
        }
    }

    /// What happened between `before` and `self`.
    fn since(&self, before: &Counters) -> WatchFigures {
        let bucket = |c: &Counters, i: usize| c.buckets.get(i).copied().unwrap_or(0);
        let diff: Vec<u64> = (0..self.buckets.len())
            .map(|i| bucket(self, i).saturating_sub(bucket(before, i)))
            .collect();
        WatchFigures {
            requests: self.requests.saturating_sub(before.requests),
            errors: self.errors.saturating_sub(before.errors),
            p99_ms: quantile(&diff, 0.99),
        }
    }
}

/// Estimates a quantile from cumulative bucket counts (the last is `+Inf`), interpolating
/// linearly inside the bucket it falls in; beyond the last bound it answers that bound.
fn quantile(cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &count) in cumulative.iter().enumerate() {
        let Some(&upper) = LATENCY_BUCKETS_MS.get(i) else {
            return Some(lower);
        };
        if count >= rank {
            let inside = (count - below).max(1) as f64;
            return Some(lower + (upper - lower) * (rank - below) as f64 / inside);
        }
        below = count;
        lower = upper;
    }
    Some(lower)
}

impl Engine {
    /// Watches the new release for `verify.watch`; returns why it must be rolled back, if so.
    pub(crate) async fn watch(
        &self,
        p: &Promotion,
        router: &Router,
        instance: &LiveInstance,
    ) -> Result<Option<String>, EngineError> {
        let Some(rule) = self
            .config
            .environment(&p.env)
            .and_then(|e| e.verify.watch.clone())
        else {
            return Ok(None);
        };
        let label = instance.upstream.label().to_owned();
        let app = p.app.as_str();
        let before = Counters::of(router, app, &label);
        let started_at = crate::flow::now();
        let deadline = tokio::time::Instant::now() + rule.watch.as_std();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(left.min(LOOK_EVERY)).await;
            let figures = Counters::of(router, app, &label).since(&before);
            let decisions = self.store.decisions(p.id, Stage::Watch).await?;
            if let Some(rejection) = decisions.iter().find(|d| !d.approve) {
                let why = format!(
                    "rejected by {} during the watch: {}",
                    rejection.actor,
                    rejection.comment.as_deref().unwrap_or("")
                );
                let output = format!("{why}\nmeasured since the switch: {figures}");
                self.gate(p, "watch", false, output, started_at).await?;
                return Ok(Some(why));
            }
            let healthy = self
                .driver
                .status(&instance.id)
                .await
                .is_some_and(|s| s.healthy);
            if !healthy {
                let why = format!(
                    "instance {} stopped answering (crashed or exited) during the watch; {figures}",
                    instance.id
                );
                self.gate(p, "watch", false, why.clone(), started_at)
                    .await?;
                return Ok(Some(why));
            }
            let ended = tokio::time::Instant::now() >= deadline;
            match judge(&rule, &figures, ended) {
                WatchVerdict::Continue => {}
                WatchVerdict::Breach(why) => {
                    let output = format!("{why}\nmeasured since the switch: {figures}");
                    self.gate(p, "watch", false, output, started_at).await?;
                    return Ok(Some(why));
                }
                WatchVerdict::Pass(why) => {
                    self.gate(p, "watch", true, why, started_at).await?;
                    return Ok(None);
                }
                WatchVerdict::Inconclusive(why) => {
                    return match rule.inconclusive {
                        Inconclusive::Pass => {
                            let output =
                                format!("{why}; verify.inconclusive = \"pass\" accepts it");
                            self.gate(p, "watch", true, output, started_at).await?;
                            Ok(None)
                        }
                        Inconclusive::Fail => {
                            let why =
                                format!("{why}; verify.inconclusive = \"fail\" rolls it back");
                            self.gate(p, "watch", false, why.clone(), started_at)
                                .await?;
                            Ok(Some(why))
                        }
                        Inconclusive::Hold => {
                            let output = format!(
                                "{why}; held for a person (verify.inconclusive = \"hold\")"
                            );
                            self.gate(p, "watch", true, output, started_at).await?;
                            self.await_watch_decision(p, why).await
                        }
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        // 100 responses: 98 within 1ms, 2 between 250 and 500ms.
        let mut buckets = vec![98, 98, 98, 98, 98, 98, 98, 98, 100, 100, 100, 100, 100];
        buckets.push(100);
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!((250.0..=500.0).contains(&p99), "{p99}");
        assert_eq!(quantile(&[0; 14], 0.99), None);
        // Everything slower than the last bound: the bound is all that can be said.
        let mut slow = vec![0; 13];
        slow.push(5);
        assert_eq!(quantile(&slow, 0.99), Some(10000.0));
    }
}
