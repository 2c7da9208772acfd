use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::window::LastMinute;

/// Upper bounds of the latency histogram's buckets, in milliseconds. Each bucket counts the
/// responses at or below its bound (Prometheus-style, cumulative); the implicit `+Inf` bucket is
/// [`LatencyHistogram::count`].
pub const LATENCY_BUCKETS_MS: [f64; 13] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// The release label under which the router counts the answers it gives when nothing is live:
/// the app it could name (or `none` too when it could not name one) with release `none`.
pub const NO_RELEASE: &str = "none";

/// What the router of one environment counted for one release of one app, since it started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpstreamMetrics {
    /// The app the requests were for.
    pub app: String,
    /// The release that answered them, as its upstream is labelled (`web@1.4.2`), or
    /// [`NO_RELEASE`] for the requests the router answered because nothing was live.
    pub label: String,
    /// Whether this release is the one the app is routed to now.
    pub live: bool,
    /// Responses by status class; 502/503/504 the router answered itself are included.
    pub requests: StatusClasses,
    /// Time from the router receiving a request to the response head.
    pub latency: LatencyHistogram,
    /// Request body bytes forwarded to the upstream, plus the client-to-upstream bytes of
    /// upgraded connections once they close.
    pub request_bytes: u64,
    /// Response body bytes sent to clients, including the router's own problem documents, plus
    /// the upstream-to-client bytes of upgraded connections once they close.
    pub response_bytes: u64,
    /// The figures of the last minute.
    pub last_minute: WindowSummary,
}

impl UpstreamMetrics {
    /// Adds the figures of the same app and release counted by another router (another host
    /// of the environment). Latency percentiles of the last minute take the worse of the two.
    pub fn absorb(&mut self, other: &UpstreamMetrics) {
        let (a, b) = (&mut self.requests, &other.requests);
        a.informational += b.informational;
        a.success += b.success;
        a.redirection += b.redirection;
        a.client_error += b.client_error;
        a.server_error += b.server_error;
        for (mine, theirs) in self
            .latency
            .buckets
            .iter_mut()
            .zip(other.latency.buckets.iter())
        {
            mine.count += theirs.count;
        }
        self.latency.sum_ms += other.latency.sum_ms;
        self.latency.count += other.latency.count;
        self.request_bytes += other.request_bytes;
        self.response_bytes += other.response_bytes;
        self.live |= other.live;
        let (m, o) = (&mut self.last_minute, &other.last_minute);
        let requests = m.requests + o.requests;
        if requests > 0 {
            m.error_rate = (m.error_rate * m.requests as f64 + o.error_rate * o.requests as f64)
                / requests as f64;
        }
        m.requests = requests;
        m.requests_per_second += o.requests_per_second;
        let worse = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        m.p50_ms = worse(m.p50_ms, o.p50_ms);
        m.p99_ms = worse(m.p99_ms, o.p99_ms);
    }
}

/// Response counts by status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClasses {
    /// Informational responses; in practice `101 Switching Protocols` for upgrades.
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// Successful responses.
    #[serde(rename = "2xx")]
    pub success: u64,
    /// Redirections.
    #[serde(rename = "3xx")]
    pub redirection: u64,
    /// Client errors.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// Server errors, from the upstream or the router (codes above 599 count here too).
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl StatusClasses {
    /// The classes with their Prometheus names, in order.
    pub fn by_name(&self) -> [(&'static str, u64); 5] {
        [
            ("1xx", self.informational),
            ("2xx", self.success),
            ("3xx", self.redirection),
            ("4xx", self.client_error),
            ("5xx", self.server_error),
        ]
    }

    /// All responses counted.
    pub fn total(&self) -> u64 {
        self.by_name().iter().map(|(_, count)| count).sum()
    }

    fn count(&mut self, status: StatusCode) {
        let class = match status.as_u16() {
            100..=199 => &mut self.informational,
            200..=299 => &mut self.success,
            300..=399 => &mut self.redirection,
            400..=499 => &mut self.client_error,
            _ => &mut self.server_error,
        };
        *class += 1;
    }
}

/// A Prometheus-style latency histogram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Cumulative buckets, one per bound of [`LATENCY_BUCKETS_MS`].
    pub buckets: Vec<LatencyBucket>,
    /// The latencies added up, in milliseconds.
    pub sum_ms: f64,
    /// How many latencies were counted: the `+Inf` bucket.
    pub count: u64,
}

/// One cumulative histogram bucket.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyBucket {
    /// The bucket's upper bound, in milliseconds.
    pub le_ms: f64,
    /// Responses whose latency was at most `le_ms`.
    pub count: u64,
}

/// The last minute of one release, for `status` and for gates watching a switch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// Responses per second over the last minute: the responses of the last 60 s, divided by 60.
    pub requests_per_second: f64,
    /// The share of responses that were 5xx, from 0 to 1; 0 when there were none.
    pub error_rate: f64,
    /// Median latency to the response head, estimated; None without responses.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency to the response head, estimated; None without responses.
    pub p99_ms: Option<f64>,
    /// Responses in the window.
    pub requests: u64,
}

impl WindowSummary {
    /// The figures of both windows' responses together, as the users who sent them saw them
    /// (percentiles: the worse of the two).
    pub fn with(self, other: WindowSummary) -> WindowSummary {
        let requests = self.requests + other.requests;
        let errors =
            self.error_rate * self.requests as f64 + other.error_rate * other.requests as f64;
        let worse = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        WindowSummary {
            requests_per_second: self.requests_per_second + other.requests_per_second,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors / requests as f64
            },
            p50_ms: worse(self.p50_ms, other.p50_ms),
            p99_ms: worse(self.p99_ms, other.p99_ms),
            requests,
        }
    }
}

/// What an app's users met in an environment over the last minute: its live release's
/// responses, and those a chaos fault answered instead ([`crate::faults::FAULTED`]).
pub fn users_saw(metrics: &[UpstreamMetrics], app: &str) -> Option<WindowSummary> {
    let live = metrics
        .iter()
        .find(|m| m.app == app && m.live)
        .map(|m| m.last_minute);
    let faulted = metrics
        .iter()
        .find(|m| m.app == app && m.label == crate::faults::FAULTED)
        .map(|m| m.last_minute)
        .filter(|w| w.requests > 0);
    match (live, faulted) {
        (Some(l), Some(f)) => Some(l.with(f)),
        (l, f) => l.or(f),
    }
}

/// Whether a response counts as an error: a 5xx, or a status past 599 (an upstream's own).
pub(crate) fn is_error(status: StatusCode) -> bool {
    status.is_server_error() || status.as_u16() > 599
}

/// The live counters of one release; shared by the routes and bodies that record into it.
pub(crate) struct ReleaseMetrics {
    pub(crate) app: String,
    label: String,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    answered: Mutex<Answered>,
}

/// Everything counted when a response head goes out, kept under one short lock.
struct Answered {
    classes: StatusClasses,
    /// Per bucket, not cumulative: the responses whose latency falls in that bucket and no lower.
    buckets: [u64; LATENCY_BUCKETS_MS.len()],
    sum: Duration,
    count: u64,
    last_minute: LastMinute,
}

impl ReleaseMetrics {
    pub(crate) fn new(app: &str, label: &str) -> Self {
        Self {
            app: app.to_owned(),
            label: label.to_owned(),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            answered: Mutex::new(Answered {
                classes: StatusClasses::default(),
                buckets: [0; LATENCY_BUCKETS_MS.len()],
                sum: Duration::ZERO,
                count: 0,
                last_minute: LastMinute::new(Instant::now()),
            }),
        }
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Counts a response head with `status` going out now, for a request received at `received`;
    /// returns its latency.
    pub(crate) fn record_response(&self, status: StatusCode, received: Instant) -> Duration {
        let now = Instant::now();
        let latency = now.saturating_duration_since(received);
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = LATENCY_BUCKETS_MS.iter().position(|&bound| ms <= bound);
        let mut answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        answered.classes.count(status);
        if let Some(bucket) = bucket {
            answered.buckets[bucket] += 1;
        }
        answered.sum += latency;
        answered.count += 1;
        let error = is_error(status);
        answered.last_minute.record(now, latency, error);
        latency
    }

    pub(crate) fn add_request_bytes(&self, bytes: u64) {
        self.request_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_response_bytes(&self, bytes: u64) {
        self.response_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, live: bool) -> UpstreamMetrics {
        let now = Instant::now();
        let answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        let mut below = 0;
        let buckets = LATENCY_BUCKETS_MS
            .iter()
            .zip(&answered.buckets)
            .map(|(&le_ms, &count)| {
                below += count;
                LatencyBucket {
                    le_ms,
                    count: below,
                }
            })
            .collect();
        UpstreamMetrics {
            app: self.app.clone(),
            label: self.label.clone(),
            live,
            requests: answered.classes,
            latency: LatencyHistogram {
                buckets,
                sum_ms: answered.sum.as_secs_f64() * 1000.0,
                count: answered.count,
            },
            request_bytes: self.request_bytes.load(Ordering::Relaxed),
            response_bytes: self.response_bytes.load(Ordering::Relaxed),
            last_minute: answered.last_minute.summary(now),
        }
    }
}

impl std::fmt::Debug for ReleaseMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseMetrics")
            .field("app", &self.app)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Every release one router has counted for, in the order it first saw them. A release is kept
/// after it stops being live, so its counters never go back to zero while the router runs.
#[derive(Debug, Default)]
pub(crate) struct MetricsRegistry {
    releases: Mutex<Vec<Arc<ReleaseMetrics>>>,
}

impl MetricsRegistry {
    /// The counters of `label` of `app`, created on first use.
    pub(crate) fn release(&self, app: &str, label: &str) -> Arc<ReleaseMetrics> {
        let mut releases = self.releases.lock().unwrap_or_else(PoisonError::into_inner);
        let known = releases
            .iter()
            .find(|release| release.app == app && release.label == label);
        if let Some(release) = known {
            return release.clone();
        }
        let release = Arc::new(ReleaseMetrics::new(app, label));
        releases.push(release.clone());
        release
    }

    /// Every release counted so far, grouped by app, each app's in the order they were first seen.
    pub(crate) fn releases(&self) -> Vec<Arc<ReleaseMetrics>> {
        let mut releases = self
            .releases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        releases.sort_by(|a, b| a.app.cmp(&b.app));
        releases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn histogram_buckets_are_cumulative_and_count_is_the_inf_bucket() {
        let release = ReleaseMetrics::new("web", "web@1");
        for (status, latency_ms) in [(200, 0), (200, 3), (404, 3), (500, 40), (503, 20_000)] {
            let received = Instant::now();
            tokio::time::advance(Duration::from_millis(latency_ms)).await;
            release.record_response(StatusCode::from_u16(status).unwrap(), received);
        }
        let snapshot = release.snapshot(true);
        let cumulative: Vec<u64> = snapshot.latency.buckets.iter().map(|b| b.count).collect();
        assert_eq!(cumulative, [1, 1, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4]);
        assert_eq!(snapshot.latency.count, 5);
        assert_eq!(snapshot.latency.sum_ms, 20_046.0);
        assert_eq!(
            snapshot.requests,
            StatusClasses {
                success: 2,
                client_error: 1,
                server_error: 2,
                ..StatusClasses::default()
            }
        );
        assert_eq!(snapshot.last_minute.error_rate, 0.4);
    }
}
