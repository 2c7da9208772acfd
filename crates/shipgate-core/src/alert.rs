//! Alerts on live figures: `[alerts.NAME] env = "production", when = "error_rate > 0.05 for
//! 2m"`. A condition is a figure of the router (`error_rate`, `p99`, `rps`) compared with a
//! threshold, or a state of shipgate's (`unhealthy`, `crash_loop`, `drifted`, `canary_held`,
//! `signing_off`), or the age of the newest restorable backup (`backup_age > 26h`), held for a
//! while
//! (`for 2m`; at once without). An alert fires once when its condition has held that long, and
//! resolves once when it no longer holds.

use jiff::Timestamp;

use crate::duration::Duration;

/// What an alert watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The live release's share of 5xx over the last minute, above this.
    ErrorRateAbove(f64),
    /// Its p99 latency over the last minute, above this many milliseconds.
    P99Above(f64),
    /// Its responses per second over the last minute, below this.
    RpsBelow(f64),
    /// Its instance does not answer its health check.
    Unhealthy,
    /// Its instance crash-looped and is no longer restarted.
    CrashLoop,
    /// The live release no longer matches its record.
    Drifted,
    /// A canary rollout holds: a step too quiet to judge, or a pause waiting for a person.
    CanaryHeld,
    /// A release waits for its testers' sign-off (`[environments.NAME.signoff]`).
    SigningOff,
    /// The newest restorable backup of its data is older than this many seconds, or there is
    /// none (`backup_age > 26h`).
    BackupAgeAbove(f64),
}

/// An alert as the config declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// Its name.
    pub name: String,
    /// The environment it watches.
    pub env: crate::EnvName,
    /// Only this app (every app of the config without).
    pub app: Option<crate::AppName>,
    /// What it watches.
    pub condition: Condition,
    /// How long the condition must hold before it fires.
    pub hold: std::time::Duration,
    /// The text of `when`, as written.
    pub when: String,
}

/// What the figures and states of one app in one environment are now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// Share of 5xx, 0 to 1.
    pub error_rate: f64,
    /// p99 in ms, when there were responses.
    pub p99_ms: Option<f64>,
    /// Responses per second.
    pub rps: f64,
    /// Its instance fails its health check.
    pub unhealthy: bool,
    /// It crash-looped.
    pub crash_loop: bool,
    /// It drifted.
    pub drifted: bool,
    /// A canary rollout of it holds (inconclusive or paused).
    pub canary_held: bool,
    /// A release of it waits for sign-off.
    pub signing_off: bool,
    /// How old its newest restorable backup is, in seconds: None without data there, infinite
    /// when there is no restorable backup.
    pub backup_age_secs: Option<f64>,
}

impl Condition {
    /// Reads `when`: `error_rate > 0.05`, `p99 > 800ms`, `rps < 1`, `unhealthy`, `crash_loop`,
    /// `drifted`, `canary_held`, `signing_off`, each with an optional `for 2m`.
    pub fn parse(when: &str) -> Result<(Condition, std::time::Duration), String> {
        let help = "write `error_rate > 0.05 for 2m`, `p99 > 800ms`, `rps < 1 for 5m`, `unhealthy`, `crash_loop`, `drifted`, `canary_held for 10m`, `signing_off for 24h` or `backup_age > 26h`";
        let (what, hold) = match when.split_once(" for ") {
            Some((what, d)) => (what.trim(), Duration::parse(d.trim())?.as_std()),
            None => (when.trim(), std::time::Duration::ZERO),
        };
        let words: Vec<&str> = what.split_whitespace().collect();
        let number = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("`{s}` is not a number; {help}"))
        };
        let condition = match words.as_slice() {
            ["unhealthy"] => Condition::Unhealthy,
            ["crash_loop"] => Condition::CrashLoop,
            ["drifted"] => Condition::Drifted,
            ["canary_held"] => Condition::CanaryHeld,
            ["signing_off"] => Condition::SigningOff,
            ["error_rate", ">", n] => Condition::ErrorRateAbove(number(n)?),
            ["p99", ">", d] => {
                Condition::P99Above(Duration::parse(d)?.as_std().as_secs_f64() * 1000.0)
            }
            ["rps", "<", n] => Condition::RpsBelow(number(n)?),
            ["backup_age", ">", d] => {
                Condition::BackupAgeAbove(Duration::parse(d)?.as_std().as_secs_f64())
            }
            _ => return Err(format!("`{when}` is not an alert condition; {help}")),
        };
        Ok((condition, hold))
    }

    /// Whether it holds for `o`.
    pub fn holds(&self, o: &Observation) -> bool {
        match self {
            Condition::ErrorRateAbove(max) => o.error_rate > *max,
            Condition::P99Above(max) => o.p99_ms.is_some_and(|p| p > *max),
            Condition::RpsBelow(min) => o.rps < *min,
            Condition::Unhealthy => o.unhealthy,
            Condition::CrashLoop => o.crash_loop,
            Condition::Drifted => o.drifted,
            Condition::CanaryHeld => o.canary_held,
            Condition::SigningOff => o.signing_off,
            Condition::BackupAgeAbove(max) => o.backup_age_secs.is_some_and(|a| a > *max),
        }
    }

    /// The figure it compares, as the events say it.
    pub fn measured(&self, o: &Observation) -> String {
        match self {
            Condition::ErrorRateAbove(_) => format!("error rate {:.4}", o.error_rate),
            Condition::P99Above(_) => match o.p99_ms {
                Some(p) => format!("p99 {p:.1}ms"),
                None => "no responses".into(),
            },
            Condition::RpsBelow(_) => format!("{:.2} req/s", o.rps),
            Condition::Unhealthy => format!("unhealthy: {}", o.unhealthy),
            Condition::CrashLoop => format!("crash-looped: {}", o.crash_loop),
            Condition::Drifted => format!("drifted: {}", o.drifted),
            Condition::CanaryHeld => format!("canary held: {}", o.canary_held),
            Condition::SigningOff => format!("waiting for sign-off: {}", o.signing_off),
            Condition::BackupAgeAbove(_) => match o.backup_age_secs {
                Some(a) if a.is_finite() => format!("newest restorable backup {:.0} s old", a),
                Some(_) => "no restorable backup".into(),
                None => "no data here".into(),
            },
        }
    }
}

/// Where one alert of one app stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertState {
    /// Since when the condition holds, while it does.
    pub since: Option<Timestamp>,
    /// Whether it fired and has not resolved.
    pub firing: bool,
}

/// What a look at an alert changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It fires now.
    Firing,
    /// It resolved now.
    Resolved,
}

impl AlertState {
    /// Takes a look at `now` with the condition holding or not; answers the transition, if
    /// any. Fires once after `hold`, resolves once when it stops holding.
    pub fn step(
        &mut self,
        now: Timestamp,
        holds: bool,
        hold: std::time::Duration,
    ) -> Option<Transition> {
        if !holds {
            self.since = None;
            return std::mem::take(&mut self.firing).then_some(Transition::Resolved);
        }
        let since = *self.since.get_or_insert(now);
        let held = now.duration_since(since).as_secs_f64() >= hold.as_secs_f64();
        if held && !self.firing {
            self.firing = true;
            return Some(Transition::Firing);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_and_judge() {
        let (c, hold) = Condition::parse("error_rate > 0.05 for 2m").unwrap();
        assert_eq!(c, Condition::ErrorRateAbove(0.05));
        assert_eq!(hold, std::time::Duration::from_secs(120));
        assert_eq!(
            Condition::parse("p99 > 800ms").unwrap().0,
            Condition::P99Above(800.0)
        );
        assert_eq!(
            Condition::parse("rps < 1").unwrap().0,
            Condition::RpsBelow(1.0)
        );
        assert_eq!(
            Condition::parse("crash_loop").unwrap().0,
            Condition::CrashLoop
        );
        assert_eq!(
            Condition::parse("canary_held for 10m").unwrap(),
            (Condition::CanaryHeld, std::time::Duration::from_secs(600))
        );
        assert_eq!(
            Condition::parse("backup_age > 26h").unwrap().0,
            Condition::BackupAgeAbove(26.0 * 3600.0)
        );
        let none = Observation {
            backup_age_secs: Some(f64::INFINITY),
            ..Default::default()
        };
        assert!(Condition::BackupAgeAbove(60.0).holds(&none));
        assert!(!Condition::BackupAgeAbove(60.0).holds(&Observation::default()));
        assert_eq!(
            Condition::parse("signing_off for 24h").unwrap(),
            (
                Condition::SigningOff,
                std::time::Duration::from_secs(86_400)
            )
        );
        assert_eq!(
            Condition::parse("canary_held for 10m").unwrap(),
            (Condition::CanaryHeld, std::time::Duration::from_secs(600))
        );
        assert!(
            Condition::parse("errors > 5")
                .unwrap_err()
                .contains("not an alert condition")
        );
        assert!(
            Condition::parse("error_rate > x")
                .unwrap_err()
                .contains("not a number")
        );
        let o = Observation {
            error_rate: 0.1,
            p99_ms: Some(900.0),
            rps: 0.5,
            ..Default::default()
        };
        assert!(c.holds(&o));
        assert!(Condition::P99Above(800.0).holds(&o));
        assert!(Condition::RpsBelow(1.0).holds(&o));
        assert!(!Condition::Unhealthy.holds(&o));
    }

    #[test]
    fn an_alert_fires_once_after_its_hold_and_resolves_once() {
        let t0: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let hold = std::time::Duration::from_secs(120);
        let mut a = AlertState::default();
        assert_eq!(a.step(at(0), true, hold), None);
        assert_eq!(a.step(at(60), true, hold), None);
        assert_eq!(a.step(at(120), true, hold), Some(Transition::Firing));
        assert_eq!(a.step(at(180), true, hold), None);
        assert_eq!(a.step(at(240), false, hold), Some(Transition::Resolved));
        assert_eq!(a.step(at(300), false, hold), None);
        // A blip shorter than the hold does not fire.
        assert_eq!(a.step(at(360), true, hold), None);
        assert_eq!(a.step(at(400), false, hold), None);
        assert_eq!(a.step(at(460), true, hold), None);
        assert!(!a.firing);
    }
}
