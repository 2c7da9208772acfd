use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::WindowSummary;

/// How many one-second slots the window keeps: one minute.
const SECONDS: usize = 60;
/// Latency buckets per second, fine enough to estimate percentiles: bucket `i` holds latencies up
/// to `FINE_BASE_MS * FINE_GROWTH^i`, so an estimate is off by at most a quarter of its value.
const FINE_BUCKETS: usize = 64;
const FINE_BASE_MS: f64 = 0.05;
const FINE_GROWTH: f64 = 1.25;

/// What one second of the window saw.
#[derive(Clone, Copy)]
struct Second {
    /// Whole seconds since the window started; a slot holding an older second is stale.
    second: u64,
    requests: u32,
    errors: u32,
    latencies: [u32; FINE_BUCKETS],
}

impl Second {
    const EMPTY: Second = Second {
        second: 0,
        requests: 0,
        errors: 0,
        latencies: [0; FINE_BUCKETS],
    };
}

/// A rolling one-minute window of answered requests: a ring of per-second slots, reused as the
/// seconds go by, so recording never allocates.
pub(crate) struct LastMinute {
    started: Instant,
    seconds: Box<[Second; SECONDS]>,
}

impl LastMinute {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            seconds: Box::new([Second::EMPTY; SECONDS]),
        }
    }

    /// Counts one response head, sent at `now` after `latency`; `error` for a 5xx.
    pub(crate) fn record(&mut self, now: Instant, latency: Duration, error: bool) {
        let second = self.second_of(now);
        let slot = &mut self.seconds[slot_of(second)];
        if slot.second != second {
            *slot = Second {
                second,
                ..Second::EMPTY
            };
        }
        slot.requests = slot.requests.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(error));
        let bucket = &mut slot.latencies[fine_bucket(latency)];
        *bucket = bucket.saturating_add(1);
    }

    /// The figures of the minute up to `now`.
    pub(crate) fn summary(&self, now: Instant) -> WindowSummary {
        let current = self.second_of(now);
        let oldest = current.saturating_sub(SECONDS as u64 - 1);
        let mut requests = 0u64;
        let mut errors = 0u64;
        let mut latencies = [0u64; FINE_BUCKETS];
        let in_window = self
            .seconds
            .iter()
            .filter(|slot| (oldest..=current).contains(&slot.second));
        for slot in in_window {
            requests += u64::from(slot.requests);
            errors += u64::from(slot.errors);
            for (total, &count) in latencies.iter_mut().zip(&slot.latencies) {
                *total += u64::from(count);
            }
        }
        // Over the whole minute, however recently counting started: 4 requests in the first
        // second are 4 a minute, not 4 a second.
        WindowSummary {
            requests_per_second: requests as f64 / SECONDS as f64,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: percentile(&latencies, requests, 0.50),
            p99_ms: percentile(&latencies, requests, 0.99),
            requests,
        }
    }

    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }
}

fn slot_of(second: u64) -> usize {
    // The remainder is below SECONDS, so it fits a usize.
    (second % SECONDS as u64) as usize
}

/// The fine bucket a latency falls in; everything beyond the last bound lands in the last bucket.
fn fine_bucket(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1000.0;
    if ms <= FINE_BASE_MS {
        return 0;
    }
    let index = ((ms / FINE_BASE_MS).ln() / FINE_GROWTH.ln()).ceil();
    // `as` saturates on floats, and the index is clamped to the table right after.
    (index as usize).min(FINE_BUCKETS - 1)
}

/// The upper bound of fine bucket `index`, in milliseconds.
fn fine_bound_ms(index: usize) -> f64 {
    // FINE_BUCKETS is far below i32::MAX.
    FINE_BASE_MS * FINE_GROWTH.powi(index as i32)
}

/// Estimates the `quantile` of `count` latencies from their fine buckets, interpolating linearly
/// within the bucket the rank falls in. None when there is nothing to estimate from.
fn percentile(buckets: &[u64; FINE_BUCKETS], count: u64, quantile: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    // The rank of the request at the quantile, 1-based: the p99 of 10 requests is the 10th.
    let rank = ((quantile * count as f64).ceil() as u64).clamp(1, count);
    let mut below = 0u64;
    for (index, &in_bucket) in buckets.iter().enumerate() {
        if in_bucket > 0 && below + in_bucket >= rank {
            let lower = if index == 0 {
                0.0
            } else {
                fine_bound_ms(index - 1)
            };
            let upper = fine_bound_ms(index);
            let share = (rank - below) as f64 / in_bucket as f64;
            return Some(lower + (upper - lower) * share);
        }
        below += in_bucket;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn seconds_older_than_a_minute_drop_out() {
        let mut window = LastMinute::new(Instant::now());
        for _ in 0..10 {
            window.record(Instant::now(), ms(10), false);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..5 {
            window.record(Instant::now(), ms(10), true);
        }

        let both = window.summary(Instant::now());
        assert_eq!(both.requests, 15);
        assert!((both.error_rate - 5.0 / 15.0).abs() < 1e-9, "{both:?}");
        assert!(
            (both.requests_per_second - 15.0 / 60.0).abs() < 1e-9,
            "{both:?}"
        );

        // 60 s after the first ten they are out; the five of second 30 are still in.
        tokio::time::advance(Duration::from_secs(30)).await;
        let later = window.summary(Instant::now());
        assert_eq!(later.requests, 5);
        assert_eq!(later.error_rate, 1.0);

        tokio::time::advance(Duration::from_secs(30)).await;
        let empty = window.summary(Instant::now());
        assert_eq!(empty.requests, 0);
        assert_eq!(empty.requests_per_second, 0.0);
        assert_eq!(empty.error_rate, 0.0);
        assert_eq!(empty.p50_ms, None);
        assert_eq!(empty.p99_ms, None);
    }

    #[tokio::test(start_paused = true)]
    async fn four_requests_in_the_first_second_are_four_a_minute() {
        let mut window = LastMinute::new(Instant::now());
        for _ in 0..4 {
            window.record(Instant::now(), ms(1), false);
        }
        let at_once = window.summary(Instant::now());
        assert!(
            (at_once.requests_per_second - 4.0 / 60.0).abs() < 1e-9,
            "{at_once:?}"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let later = window.summary(Instant::now());
        assert_eq!(later.requests_per_second, at_once.requests_per_second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_slot_forgets_its_old_second() {
        let mut window = LastMinute::new(Instant::now());
        window.record(Instant::now(), ms(1), false);
        // Second 60 reuses the slot of second 0; the window now spans seconds 1 to 60.
        tokio::time::advance(Duration::from_secs(60)).await;
        window.record(Instant::now(), ms(1), false);
        let summary = window.summary(Instant::now());
        assert_eq!(summary.requests, 1);
        assert!((summary.requests_per_second - 1.0 / 60.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_are_estimated_within_a_bucket() {
        let mut window = LastMinute::new(Instant::now());
        for _ in 0..98 {
            window.record(Instant::now(), ms(10), false);
        }
        for _ in 0..2 {
            window.record(Instant::now(), ms(800), false);
        }
        let summary = window.summary(Instant::now());
        let p50 = summary.p50_ms.unwrap();
        let p99 = summary.p99_ms.unwrap();
        assert!(
            (10.0 / FINE_GROWTH..=10.0 * FINE_GROWTH).contains(&p50),
            "{p50}"
        );
        assert!(
            (800.0 / FINE_GROWTH..=800.0 * FINE_GROWTH).contains(&p99),
            "{p99}"
        );
    }

    #[test]
    fn fine_buckets_cover_a_minute() {
        assert_eq!(fine_bucket(Duration::ZERO), 0);
        assert!(fine_bound_ms(FINE_BUCKETS - 1) > 60_000.0);
        assert_eq!(fine_bucket(Duration::from_secs(3600)), FINE_BUCKETS - 1);
        for index in [1, 10, 40] {
            let bound = Duration::from_secs_f64(fine_bound_ms(index) / 1000.0 * 0.99);
            assert_eq!(fine_bucket(bound), index);
        }
    }
}
