//! The four DORA metrics from shipgate's own history, with no guessing: what was promoted,
//! when, whether it failed or was rolled back, and when each release's commit was made.
//!
//! - deployment frequency: successful promotions (`promote`, not rollbacks or redeploys;
//!   those rolled back later count, as they were live) per day;
//! - lead time for changes: from the release's commit time to that success (the median);
//! - change failure rate: promotions that failed verification, were rolled back by their watch
//!   (`rolled_back`), or were rolled back by hand (a `rollback` succeeded before the next
//!   promotion), over all finished promotions;
//! - time to restore: from the request of such a change to the next succeeded promotion of any
//!   kind there, and from an alert firing there to its resolving (the median).
//!
//! Each per app and environment over a window of days, with the Four Keys buckets.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{PromotionKind, PromotionState};

/// One promotion as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The app.
    pub app: String,
    /// The environment.
    pub env: String,
    /// What kind of promotion.
    pub kind: PromotionKind,
    /// Where it ended (or stands).
    pub state: PromotionState,
    /// When it was asked for: changes are ordered by it, and a failure counts from it.
    pub requested_at: Timestamp,
    /// When it reached that state (a manual rollback moves the change it undoes to
    /// `rolled_back` then).
    pub finished_at: Timestamp,
    /// When its release's commit was made, if known.
    pub commit_time: Option<Timestamp>,
    /// How long its release waited for user acceptance sign-off (`signing_off`) before this
    /// change finished, here or in an environment before, in seconds (None: it never did).
    pub signoff_secs: Option<f64>,
}

/// A firing alert: from when it fired to when it resolved (still open without an end). Time to
/// restore counts it like a failed change.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// The app.
    pub app: String,
    /// The environment.
    pub env: String,
    /// When the alert fired.
    pub started: Timestamp,
    /// When it resolved.
    pub ended: Option<Timestamp>,
}

/// One day of the series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Successful promotions that day.
    pub deployments: u64,
    /// Failed changes that day.
    pub failures: u64,
    /// The median lead time of that day's deployments, in seconds.
    pub lead_time_secs: Option<f64>,
}

/// The metrics of one app in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Figures {
    /// The app.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The window, in days up to now.
    pub days: u32,
    /// Successful promotions in the window.
    pub deployments: u64,
    /// Of them, per day.
    pub per_day: f64,
    /// `daily`, `weekly`, `monthly`, `fewer than monthly` or `none`.
    pub frequency: String,
    /// The median lead time for changes, in seconds (deployments with a known commit time).
    pub lead_time_secs: Option<f64>,
    /// `under a day`, `under a week`, `under a month` or `over a month`.
    pub lead_time: Option<String>,
    /// Of the lead time of those deployments, the share their releases spent waiting for
    /// user acceptance sign-off (0 to 1; None without a lead time).
    #[serde(default)]
    pub signoff_share: Option<f64>,
    /// The median time those deployments' releases waited for sign-off, in seconds (those
    /// that waited).
    #[serde(default)]
    pub signoff_secs: Option<f64>,
    /// Finished promotions in the window.
    pub changes: u64,
    /// Of them, failed or rolled back.
    pub failed_changes: u64,
    /// `failed_changes / changes`.
    pub change_failure_rate: Option<f64>,
    /// The median time to restore, in seconds (failures restored so far).
    pub restore_secs: Option<f64>,
    /// Its bucket, as for the lead time.
    pub restore: Option<String>,
    /// Failures not restored yet.
    pub unrestored: u64,
    /// Each day of the window, oldest first.
    pub series: Vec<Day>,
}

const DAY: i64 = 86_400;

/// A duration in seconds with its bucket, for people: `25 s`, `12 min`, `1.6 h`, `3.2 days`.
pub fn human(secs: Option<f64>, bucket: Option<&str>) -> String {
    let (Some(s), Some(b)) = (secs, bucket) else {
        return "-".into();
    };
    let amount = match s {
        s if s < 60.0 => format!("{s:.0} s"),
        s if s < 3600.0 => format!("{:.0} min", s / 60.0),
        s if s < DAY as f64 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / DAY as f64),
    };
    format!("{amount} ({b})")
}

/// The share of the lead time spent waiting for sign-off, with the median wait:
/// `34% (median wait 12 min)`, or `-` without a lead time.
pub fn signoff_share(f: &Figures) -> String {
    let percent = |share: f64| match share * 100.0 {
        p if p > 0.0 && p < 10.0 => format!("{p:.1}%"),
        p => format!("{p:.0}%"),
    };
    match (f.signoff_share, f.signoff_secs) {
        (Some(share), Some(secs)) => {
            let wait = human(Some(secs), Some(""));
            format!(
                "{} (median wait {})",
                percent(share),
                wait.trim_end_matches(" ()")
            )
        }
        (Some(share), None) => percent(share),
        _ => "-".into(),
    }
}

fn bucket(secs: f64) -> String {
    match secs {
        s if s < DAY as f64 => "under a day",
        s if s < 7.0 * DAY as f64 => "under a week",
        s if s < 30.0 * DAY as f64 => "under a month",
        _ => "over a month",
    }
    .to_owned()
}

fn frequency(per_day: f64) -> String {
    match per_day {
        0.0 => "none",
        d if d >= 1.0 => "daily",
        d if d >= 1.0 / 7.0 => "weekly",
        d if d >= 1.0 / 30.0 => "monthly",
        _ => "fewer than monthly",
    }
    .to_owned()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn day_of(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d").to_string()
}

fn finished(state: PromotionState) -> bool {
    matches!(
        state,
        PromotionState::Succeeded | PromotionState::Failed | PromotionState::RolledBack
    )
}

/// The environments that exist now, whose metrics are shown: those of the config, each app in
/// each even without promotions, and the on-demand ones. A deleted on-demand environment is
/// left out, and so is the history of an earlier one of the same name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    /// The configured apps (only the one asked for, if one was).
    pub apps: Vec<String>,
    /// The configured environments.
    pub envs: Vec<String>,
    /// The on-demand environments that exist, each with when it was made.
    pub on_demand: BTreeMap<String, Timestamp>,
}

impl Scope {
    /// Whether something asked for in `env` at `at` happened in an environment that exists.
    fn holds(&self, env: &str, at: Timestamp) -> bool {
        self.envs.iter().any(|e| e == env)
            || self.on_demand.get(env).is_some_and(|made| at >= *made)
    }
}

/// The metrics of each app and environment over the `days` up to `now`. `changes` may come in
/// any order and may hold promotions from before the window (they settle what followed them).
pub fn figures(changes: &[Change], now: Timestamp, days: u32) -> Vec<Figures> {
    figures_with(changes, &[], now, days)
}

/// [`figures_with`] for the environments of `scope` alone: each configured app in each
/// configured environment (even without promotions), and what happened in the on-demand ones
/// that exist since they were made.
pub fn figures_in(
    scope: &Scope,
    changes: &[Change],
    incidents: &[Incident],
    now: Timestamp,
    days: u32,
) -> Vec<Figures> {
    let changes: Vec<&Change> = changes
        .iter()
        .filter(|c| scope.holds(&c.env, c.requested_at))
        .collect();
    let incidents: Vec<&Incident> = incidents
        .iter()
        .filter(|i| scope.holds(&i.env, i.started))
        .collect();
    let configured = scope.apps.iter().flat_map(|app| {
        scope
            .envs
            .iter()
            .map(move |env| (app.as_str(), env.as_str()))
    });
    compute(configured, &changes, &incidents, now, days)
}

/// [`figures`], with firing alerts counted in the time to restore: each that fired in the
/// window adds its firing-to-resolved time (or, still firing, one unrestored).
pub fn figures_with(
    changes: &[Change],
    incidents: &[Incident],
    now: Timestamp,
    days: u32,
) -> Vec<Figures> {
    let changes: Vec<&Change> = changes.iter().collect();
    let incidents: Vec<&Incident> = incidents.iter().collect();
    compute(std::iter::empty(), &changes, &incidents, now, days)
}

/// The figures of every app and environment of `changes`, and of each in `shown` too.
fn compute<'a>(
    shown: impl Iterator<Item = (&'a str, &'a str)>,
    changes: &[&'a Change],
    incidents: &[&Incident],
    now: Timestamp,
    days: u32,
) -> Vec<Figures> {
    let since = now
        .checked_sub(SignedDuration::from_secs(i64::from(days) * DAY))
        .unwrap_or(Timestamp::MIN);
    let mut slots: BTreeMap<(&str, &str), Vec<&Change>> = BTreeMap::new();
    for slot in shown {
        slots.entry(slot).or_default();
    }
    for c in changes {
        slots
            .entry((c.app.as_str(), c.env.as_str()))
            .or_default()
            .push(c);
    }
    let mut out = Vec::new();
    for ((app, env), mut list) in slots {
        list.sort_by_key(|c| (c.requested_at, c.finished_at));
        let in_window = |c: &Change| c.finished_at > since && c.finished_at <= now;
        let mut deployments = 0;
        let mut leads = Vec::new();
        let mut signoffs = Vec::new();
        let mut signoff_total = 0.0;
        let mut changes_n = 0;
        let mut failed_n = 0;
        let mut restores = Vec::new();
        let mut unrestored = 0;
        let mut series: BTreeMap<String, (u64, u64, Vec<f64>)> = BTreeMap::new();
        for (i, c) in list.iter().enumerate() {
            if !c.kind.is_forward() || !finished(c.state) {
                continue;
            }
            let later = &list[i + 1..];
            // Rolled back by hand: a rollback succeeded before the next promotion.
            let by_hand = later
                .iter()
                .take_while(|n| !n.kind.is_forward())
                .find(|n| n.kind == PromotionKind::Rollback && n.state == PromotionState::Succeeded)
                .filter(|_| c.state == PromotionState::Succeeded);
            let failed = c.state != PromotionState::Succeeded || by_hand.is_some();
            if in_window(c) {
                changes_n += 1;
                let day = series.entry(day_of(c.finished_at)).or_default();
                // Rolled back means it was live first: a deployment too.
                if matches!(
                    c.state,
                    PromotionState::Succeeded | PromotionState::RolledBack
                ) {
                    deployments += 1;
                    day.0 += 1;
                    if let Some(commit) = c.commit_time {
                        let lead = c.finished_at.duration_since(commit).as_secs_f64().max(0.0);
                        leads.push(lead);
                        day.2.push(lead);
                        // Never more than the lead time it is a share of.
                        signoff_total += c.signoff_secs.unwrap_or(0.0).min(lead);
                    }
                    signoffs.extend(c.signoff_secs);
                }
                if failed {
                    failed_n += 1;
                    day.1 += 1;
                    let restored = match by_hand {
                        Some(rollback) => Some(rollback.finished_at),
                        None => later
                            .iter()
                            .find(|n| n.state == PromotionState::Succeeded)
                            .map(|n| n.finished_at),
                    };
                    match restored {
                        Some(at) => {
                            restores.push(at.duration_since(c.requested_at).as_secs_f64().max(0.0))
                        }
                        None => unrestored += 1,
                    }
                }
            }
        }
        for i in incidents
            .iter()
            .filter(|i| i.app == app && i.env == env && i.started > since && i.started <= now)
        {
            match i.ended {
                Some(end) => restores.push(end.duration_since(i.started).as_secs_f64().max(0.0)),
                None => unrestored += 1,
            }
        }
        let per_day = deployments as f64 / f64::from(days.max(1));
        let lead_total: f64 = leads.iter().sum();
        let signoff_share = (!leads.is_empty()).then(|| {
            if lead_total > 0.0 {
                signoff_total / lead_total
            } else {
                0.0
            }
        });
        let lead = median(leads);
        let restore = median(restores);
        let series = (0..days)
            .rev()
            .map(|back| {
                let at = now
                    .checked_sub(SignedDuration::from_secs(i64::from(back) * DAY))
                    .unwrap_or(now);
                let day = day_of(at);
                let (deployments, failures, leads) = series.remove(&day).unwrap_or_default();
                Day {
                    day,
                    deployments,
                    failures,
                    lead_time_secs: median(leads),
                }
            })
            .collect();
        out.push(Figures {
            app: app.to_owned(),
            env: env.to_owned(),
            days,
            deployments,
            per_day,
            frequency: frequency(per_day),
            lead_time_secs: lead,
            lead_time: lead.map(bucket),
            signoff_share,
            signoff_secs: median(signoffs),
            changes: changes_n,
            failed_changes: failed_n,
            change_failure_rate: (changes_n > 0).then(|| failed_n as f64 / changes_n as f64),
            restore_secs: restore,
            restore: restore.map(bucket),
            unrestored,
            series,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn change(
        kind: PromotionKind,
        state: PromotionState,
        finished: &str,
        commit: Option<&str>,
    ) -> Change {
        Change {
            app: "web".into(),
            env: "production".into(),
            kind,
            state,
            requested_at: at(finished),
            finished_at: at(finished),
            commit_time: commit.map(at),
            signoff_secs: None,
        }
    }

    #[test]
    fn time_waiting_for_signoff_is_its_own_share_of_the_lead_time() {
        use PromotionKind::Promote;
        use PromotionState::Succeeded;
        // Lead 10 h, of which 4 h waiting for sign-off; lead 2 h with none.
        let signed = Change {
            signoff_secs: Some(4.0 * 3600.0),
            ..change(
                Promote,
                Succeeded,
                "2026-11-30T20:00:00Z",
                Some("2026-11-30T10:00:00Z"),
            )
        };
        let unsigned = change(
            Promote,
            Succeeded,
            "2026-11-29T12:00:00Z",
            Some("2026-11-29T10:00:00Z"),
        );
        let f = &figures(&[signed, unsigned.clone()], at("2026-12-01T00:00:00Z"), 30)[0];
        assert!((f.signoff_share.unwrap() - 4.0 / 12.0).abs() < 1e-12);
        assert_eq!(f.signoff_secs, Some(4.0 * 3600.0));
        let f = &figures(&[unsigned], at("2026-12-01T00:00:00Z"), 30)[0];
        assert_eq!((f.signoff_share, f.signoff_secs), (Some(0.0), None));
    }

    #[test]
    fn a_scripted_history_gives_the_exact_figures() {
        use PromotionKind::{Promote, Rollback};
        use PromotionState::{Failed, RolledBack, Succeeded};
        let history = vec![
            // Before the window: settles nothing in it.
            change(
                Promote,
                Succeeded,
                "2026-10-01T10:00:00Z",
                Some("2026-10-01T08:00:00Z"),
            ),
            // 1: succeeded, lead 2 h.
            change(
                Promote,
                Succeeded,
                "2026-11-25T12:00:00Z",
                Some("2026-11-25T10:00:00Z"),
            ),
            // 2: failed verification at 14:00; restored by the next success at 15:30 (1.5 h).
            change(
                Promote,
                Failed,
                "2026-11-26T14:00:00Z",
                Some("2026-11-26T09:00:00Z"),
            ),
            // 3: succeeded (lead 6 h), then rolled back by hand 30 min later: a failure
            //    restored in 30 min.
            change(
                Promote,
                Succeeded,
                "2026-11-26T15:30:00Z",
                Some("2026-11-26T09:30:00Z"),
            ),
            change(Rollback, Succeeded, "2026-11-26T16:00:00Z", None),
            // 4: live, then rolled back (as a later rollback marks it); not restored yet.
            change(
                Promote,
                RolledBack,
                "2026-11-30T09:00:00Z",
                Some("2026-11-29T09:00:00Z"),
            ),
            // Another environment is its own.
            Change {
                env: "staging".into(),
                ..change(
                    Promote,
                    Succeeded,
                    "2026-11-30T08:00:00Z",
                    Some("2026-11-29T08:00:00Z"),
                )
            },
        ];
        let all = figures(&history, at("2026-12-01T00:00:00Z"), 30);
        let prod = all.iter().find(|f| f.env == "production").unwrap();
        assert_eq!(prod.deployments, 3);
        assert!((prod.per_day - 3.0 / 30.0).abs() < 1e-12);
        assert_eq!(prod.frequency, "monthly");
        // Lead times of the three that went live: 2 h, 6 h and 24 h.
        assert_eq!(prod.lead_time_secs, Some(6.0 * 3600.0));
        assert_eq!(prod.lead_time.as_deref(), Some("under a day"));
        assert_eq!(prod.changes, 4);
        assert_eq!(prod.failed_changes, 3);
        assert_eq!(prod.change_failure_rate, Some(0.75));
        // Restores: 1.5 h (failed) and 0.5 h (by hand); the watch's is open.
        assert_eq!(prod.restore_secs, Some(3600.0));
        assert_eq!(prod.unrestored, 1);
        assert_eq!(prod.series.len(), 30);
        let day = |d: &str| prod.series.iter().find(|x| x.day == d).unwrap().clone();
        assert_eq!(
            (day("2026-11-26").deployments, day("2026-11-26").failures),
            (1, 2)
        );
        assert_eq!(day("2026-11-25").lead_time_secs, Some(7200.0));
        let staging = all.iter().find(|f| f.env == "staging").unwrap();
        assert_eq!((staging.deployments, staging.failed_changes), (1, 0));
        assert_eq!(staging.change_failure_rate, Some(0.0));

        // The 5 days up to the same moment see only the last three changes.
        let week = figures(&history, at("2026-12-01T00:00:00Z"), 5);
        let prod = week.iter().find(|f| f.env == "production").unwrap();
        assert_eq!(
            (prod.deployments, prod.changes, prod.failed_changes),
            (2, 3, 3)
        );
        assert_eq!(prod.frequency, "weekly");
    }

    #[test]
    fn firing_alerts_count_in_the_time_to_restore() {
        use PromotionKind::Promote;
        use PromotionState::Succeeded;
        let history = vec![change(Promote, Succeeded, "2026-11-30T10:00:00Z", None)];
        let incidents = vec![
            Incident {
                app: "web".into(),
                env: "production".into(),
                started: at("2026-11-30T11:00:00Z"),
                ended: Some(at("2026-11-30T11:20:00Z")),
            },
            Incident {
                app: "web".into(),
                env: "production".into(),
                started: at("2026-11-30T12:00:00Z"),
                ended: None,
            },
        ];
        let prod = figures_with(&history, &incidents, at("2026-12-01T00:00:00Z"), 7)
            .pop()
            .unwrap();
        assert_eq!(prod.restore_secs, Some(1200.0));
        assert_eq!(prod.unrestored, 1);
        assert_eq!(prod.failed_changes, 0, "an alert is not a change");
    }

    #[test]
    fn a_hotfix_is_a_change_and_restores_the_failure_it_fixes() {
        use PromotionKind::{Hotfix, Promote};
        use PromotionState::{Failed, Succeeded};
        let history = vec![
            change(Promote, Failed, "2026-11-30T10:00:00Z", None),
            change(Hotfix, Succeeded, "2026-11-30T10:25:00Z", None),
        ];
        let prod = figures_with(&history, &[], at("2026-12-01T00:00:00Z"), 7)
            .pop()
            .unwrap();
        assert_eq!((prod.deployments, prod.failed_changes), (1, 1));
        assert_eq!(prod.restore_secs, Some(1500.0), "restored by the hotfix");
        assert_eq!(prod.unrestored, 0);
    }

    #[test]
    fn buckets_follow_four_keys() {
        assert_eq!(frequency(3.0), "daily");
        assert_eq!(frequency(0.2), "weekly");
        assert_eq!(frequency(0.0), "none");
        assert_eq!(frequency(0.01), "fewer than monthly");
        assert_eq!(bucket(3600.0), "under a day");
        assert_eq!(bucket(40.0 * 86400.0), "over a month");
    }

    #[test]
    fn only_environments_that_exist_are_shown_the_configured_ones_even_without_promotions() {
        use PromotionKind::Promote;
        use PromotionState::Succeeded;
        let in_env = |env: &str, finished: &str| Change {
            env: env.into(),
            ..change(Promote, Succeeded, finished, None)
        };
        let changes = vec![
            in_env("production", "2026-03-09T10:00:00Z"),
            // Deleted since.
            in_env("pr-1", "2026-03-09T11:00:00Z"),
            // An earlier pr-2, deleted before this one was made.
            in_env("pr-2", "2026-03-09T12:00:00Z"),
            in_env("pr-2", "2026-03-09T14:00:00Z"),
        ];
        let scope = Scope {
            apps: vec!["web".into(), "api".into()],
            envs: vec!["staging".into(), "production".into()],
            on_demand: BTreeMap::from([("pr-2".into(), at("2026-03-09T13:00:00Z"))]),
        };
        let incidents = [Incident {
            app: "web".into(),
            env: "pr-1".into(),
            started: at("2026-03-09T11:30:00Z"),
            ended: None,
        }];
        let shown: Vec<(String, String, u64, u64)> =
            figures_in(&scope, &changes, &incidents, at("2026-03-10T00:00:00Z"), 7)
                .into_iter()
                .map(|f| (f.app, f.env, f.deployments, f.unrestored))
                .collect();
        let row = |app: &str, env: &str, n: u64| (app.to_owned(), env.to_owned(), n, 0);
        assert_eq!(
            shown,
            [
                row("api", "production", 0),
                row("api", "staging", 0),
                row("web", "pr-2", 1),
                row("web", "production", 1),
                row("web", "staging", 0),
            ]
        );
    }
}
