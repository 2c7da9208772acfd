//! HTTP faults the router injects on purpose (`shipgate chaos inject`): an abort answers a
//! status instead of the app, a delay holds the request before it is forwarded. Each fault names
//! one app, a share of its requests, optionally a path pattern and a header, and the time it
//! ends: the router stops applying it then by itself, whether or not the control plane is there
//! to say so. Requests a fault touched are counted under the release label [`FAULTED`], apart
//! from the release's own, so a watch never takes an injected error for the release's.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shipgate_core::chaos::{FaultAction, HttpFault, glob};

/// The release label under which the router counts the requests a fault touched.
pub const FAULTED: &str = "chaos";

/// What a fault decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    Abort(http::StatusCode),
    Delay(Duration),
}

/// The faults in force in one router, shared by its workers.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    faults: RwLock<Arc<Vec<HttpFault>>>,
    /// False while there is no fault, so a request without any pays one atomic load.
    any: AtomicBool,
}

impl FaultTable {
    pub(crate) fn set(&self, faults: Vec<HttpFault>) {
        let any = !faults.is_empty();
        *self.faults.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(faults);
        self.any.store(any, Ordering::Release);
    }

    pub(crate) fn list(&self) -> Vec<HttpFault> {
        self.faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .clone()
    }

    /// What the faults do to a request of `app` for `target` (path and query), with `header`
    /// looking up a request header's value by name: the first fault that matches and whose
    /// dice say so decides.
    pub(crate) fn decide<'h>(
        &self,
        app: &str,
        target: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Option<Injected> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let faults = self
            .faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let path = target.split('?').next().unwrap_or(target);
        faults
            .iter()
            .filter(|f| f.app == app && now_ms < f.until_ms)
            .filter(|f| f.path.as_deref().is_none_or(|p| glob(p, path)))
            .filter(|f| {
                f.header.as_ref().is_none_or(|(name, value)| {
                    header(name).is_some_and(|v| v.trim_ascii() == value.as_bytes())
                })
            })
            .find(|f| roll() * 100.0 < f.percent)
            .map(|f| match f.action {
                FaultAction::Abort { status } => Injected::Abort(
                    http::StatusCode::from_u16(status)
                        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                ),
                FaultAction::Delay {
                    delay_ms,
                    jitter_ms,
                } => {
                    let spread = (roll() * 2.0 - 1.0) * jitter_ms as f64;
                    let ms = (delay_ms as f64 + spread).max(0.0);
                    Injected::Delay(Duration::from_secs_f64(ms / 1000.0))
                }
            })
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// A uniform number in [0, 1) from this thread's xorshift64* generator: dice for faults, not
/// for secrets.
pub(crate) fn roll() -> f64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(percent: f64, path: Option<&str>, header: Option<(&str, &str)>) -> HttpFault {
        HttpFault {
            id: 1,
            app: "web".into(),
            action: FaultAction::Abort { status: 503 },
            percent,
            path: path.map(str::to_owned),
            header: header.map(|(n, v)| (n.to_owned(), v.to_owned())),
            until_ms: i64::MAX,
        }
    }

    #[test]
    fn a_fault_touches_its_app_path_and_header_and_its_share() {
        let table = FaultTable::default();
        let none = |_: &str| None;
        assert_eq!(table.decide("web", "/", none), None);
        table.set(vec![fault(100.0, Some("/api/*"), Some(("X-Chaos", "1")))]);
        let with = |name: &str| name.eq_ignore_ascii_case("x-chaos").then_some(&b"1"[..]);
        let abort = Some(Injected::Abort(http::StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(table.decide("web", "/api/x?y=1", with), abort);
        assert_eq!(table.decide("web", "/api/x", none), None);
        assert_eq!(table.decide("web", "/other", with), None);
        assert_eq!(table.decide("api", "/api/x", with), None);

        table.set(vec![fault(10.0, None, None)]);
        let hits = (0..20_000)
            .filter(|_| table.decide("web", "/", none).is_some())
            .count();
        assert!((1_700..=2_300).contains(&hits), "{hits} of 20000 at 10%");

        let mut ended = fault(100.0, None, None);
        ended.until_ms = 0;
        table.set(vec![ended]);
        assert_eq!(table.decide("web", "/", none), None);
    }

    #[test]
    fn a_delay_varies_within_its_jitter() {
        let table = FaultTable::default();
        let mut f = fault(100.0, None, None);
        f.action = FaultAction::Delay {
            delay_ms: 300,
            jitter_ms: 100,
        };
        table.set(vec![f]);
        let delays: Vec<Duration> = (0..2_000)
            .map(|_| match table.decide("web", "/", |_| None) {
                Some(Injected::Delay(d)) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        assert!(delays.iter().all(|d| (200.0..=400.0).contains(&ms(d))));
        let mean = delays.iter().map(ms).sum::<f64>() / delays.len() as f64;
        assert!((290.0..=310.0).contains(&mean), "{mean}");
        assert!(delays.iter().any(|d| ms(d) < 220.0) && delays.iter().any(|d| ms(d) > 380.0));
    }
}
