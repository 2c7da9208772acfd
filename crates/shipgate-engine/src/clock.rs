//! The engine's time. Every rule about time (soak, deploy windows, watches, standby) reads
//! [`Clock::now`] and waits with [`Clock::sleep_until`], so a test can drive them with a
//! [`ManualClock`] instead of sleeping through real minutes.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};

/// Where the engine's time comes from.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Resolves once [`Clock::now`] has reached `until` (at once if it has).
    async fn sleep_until(&self, until: Timestamp);
}

/// `until` as `now + d`, saturating instead of overflowing.
pub fn after(now: Timestamp, d: std::time::Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    now.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// `now - d`, saturating instead of overflowing.
pub fn before(now: Timestamp, d: std::time::Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    now.checked_sub(d).unwrap_or(Timestamp::MIN)
}

/// The real time of the machine; waits through tokio's timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep_until(&self, until: Timestamp) {
        // Looked at again after each sleep: the wall clock may be set back meanwhile.
        loop {
            let left = until.duration_since(Timestamp::now());
            let Ok(left) = std::time::Duration::try_from(left) else {
                return;
            };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]); for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    moved: tokio::sync::watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Mutex::new(start),
            moved: tokio::sync::watch::channel(start).0,
        }
    }

    /// Moves the clock forward by `d`, waking whatever waits until then.
    pub fn advance(&self, d: std::time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = after(*now, d);
        self.moved.send_replace(*now);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn sleep_until(&self, until: Timestamp) {
        let mut moved = self.moved.subscribe();
        while *moved.borrow_and_update() < until {
            if moved.changed().await.is_err() {
                return;
            }
        }
    }
}

impl crate::Engine {
    /// Runs `task` now, then every `period` of the engine's clock (counted from each start),
    /// while the engine lives; between runs only the clock is held, so the engine can go.
    pub(crate) fn every<F, Fut>(self: &std::sync::Arc<Self>, period: std::time::Duration, task: F)
    where
        F: Fn(std::sync::Arc<crate::Engine>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let engine = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let clock = std::sync::Arc::clone(&engine.clock);
                let next = after(clock.now(), period);
                task(engine).await;
                clock.sleep_until(next).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_advanced_far_enough() {
        let start: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let clock = std::sync::Arc::new(ManualClock::new(start));
        let until = after(start, std::time::Duration::from_secs(600));
        let sleeper = tokio::spawn({
            let clock = std::sync::Arc::clone(&clock);
            async move { clock.sleep_until(until).await }
        });
        clock.advance(std::time::Duration::from_secs(599));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(std::time::Duration::from_secs(1));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), until);
    }
}
