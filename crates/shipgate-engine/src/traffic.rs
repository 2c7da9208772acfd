//! Request counters of each app in each environment: cumulative [`Counters`] read off the
//! routers, and a sampled history of the last hour for charts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shipgate_core::gate::WatchFigures;
use shipgate_proxy::{LATENCY_BUCKETS_MS, UpstreamMetrics};

use crate::{Engine, Slot, locked};

/// How often the traffic history takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How long samples are kept (in the store, so the chart's hour survives a restart).
const KEPT: Duration = Duration::from_secs(3600);

pub use shipgate_store::TrafficSample;

/// The counters a slot's next sample is taken against, and when they were read.
#[derive(Default)]
pub(crate) struct History {
    last: Option<(jiff::Timestamp, Counters)>,
}

/// Cumulative counters of one release at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    requests: u64,
    errors: u64,
    /// Cumulative latency bucket counts, one per bound of [`LATENCY_BUCKETS_MS`], then `+Inf`.
    buckets: Vec<u64>,
}

impl Counters {
    pub(crate) fn of(metrics: &[UpstreamMetrics], app: &str, label: &str) -> Self {
        metrics
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
    pub(crate) fn since(&self, before: &Counters) -> WatchFigures {
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

impl Counters {
    /// Adds another release's counters (all releases of an app, for its history).
    fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }
}

impl Engine {
    /// Samples every router every [`SAMPLE_EVERY`] of the engine's clock while the engine lives.
    pub(crate) fn sample_traffic(self: &Arc<Self>) {
        self.every(SAMPLE_EVERY, |engine| async move {
            engine.take_sample(engine.clock.now()).await;
        });
    }

    async fn take_sample(&self, now: jiff::Timestamp) {
        let mut all: HashMap<Slot, Counters> = HashMap::new();
        for env in self.config().environments.iter().map(|e| &e.name) {
            for m in self.driver.router_metrics(env.as_str()).await {
                let Ok(app) = shipgate_core::AppName::parse(&m.app) else {
                    continue;
                };
                all.entry((app, env.clone()))
                    .or_default()
                    .add(&Counters::from_metrics(&m));
            }
        }
        let mut samples = Vec::new();
        {
            let mut history = locked(&self.traffic);
            for (slot, now_counters) in all {
                let h = history.entry(slot.clone()).or_default();
                if let Some((then, before)) = &h.last {
                    let figures = now_counters.since(before);
                    samples.push((
                        slot.0,
                        slot.1,
                        TrafficSample {
                            at: now,
                            seconds: now.duration_since(*then).as_secs_f64(),
                            requests: figures.requests,
                            errors: figures.errors,
                            p99_ms: figures.p99_ms,
                        },
                    ));
                }
                h.last = Some((now, now_counters));
            }
        }
        let forget_before = crate::clock::before(now, KEPT);
        if let Err(e) = self.store.record_traffic(&samples, forget_before).await {
            tracing::warn!("the traffic history could not be recorded: {e}");
        }
    }

    /// The last hour of an app's traffic in an environment, oldest first, as the store keeps
    /// it (so it spans restarts).
    pub async fn traffic_history(
        &self,
        app: &shipgate_core::AppName,
        env: &shipgate_core::EnvName,
    ) -> Result<Vec<TrafficSample>, crate::EngineError> {
        let since = crate::clock::before(self.clock.now(), KEPT);
        Ok(self.store.traffic(app, env, since).await?)
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
