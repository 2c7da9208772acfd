//! The rules of gates: what a pending promotion still waits on before it may deploy
//! (`require.*`), who may approve or reject it, and how a watched release is judged after the
//! switch (`verify.watch`). Pure functions of recorded facts and a moment, so a test controls
//! the clock.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::{ApprovalRule, Requirements, WatchRule};
use crate::window::{DeployWindow, WindowState};
use crate::{EnvName, Grant, Role};

/// At which point of a promotion a person decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Stage {
    /// Before the deploy: `require.approvals`.
    Entry,
    /// After the switch, when the watch was inconclusive and `verify.inconclusive = "hold"`.
    Watch,
}

impl Stage {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Watch => "watch",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Entry, Self::Watch]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// What a person decided about a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Verdict {
    /// Let it go on.
    Approve,
    /// Stop it (always with a comment saying why).
    Reject,
}

impl Verdict {
    /// The decision as said afterwards: `approved` or `rejected`.
    pub fn past(self) -> &'static str {
        match self {
            Self::Approve => "approved",
            Self::Reject => "rejected",
        }
    }
}

/// One recorded approval or rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Decision {
    /// Who decided: the person of the token (its name unless it names another person).
    pub actor: String,
    /// The role of their token when they decided.
    pub role: Role,
    /// Approved or rejected.
    pub verdict: Verdict,
    /// Why, in their words.
    pub comment: Option<String>,
    /// When.
    pub at: Timestamp,
}

/// A freeze in force on an environment (or on all of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Freeze {
    /// The environment frozen; None: every environment.
    pub env: Option<EnvName>,
    /// Why.
    pub reason: String,
    /// Who froze it.
    pub by: String,
    /// Since when.
    pub since: Timestamp,
}

/// What a pending promotion still waits on, each with the moment it may end by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "gate", rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Wait {
    /// Fewer distinct approvals than `require.approvals`.
    Approvals {
        /// Approvals that count.
        have: u32,
        /// Approvals needed.
        need: u32,
        /// Who approved so far.
        approvers: Vec<String>,
        /// The role an approver must have, when the rule names one.
        role: Option<Role>,
    },
    /// The release has not been verified in the environment before for `require.soak` yet.
    Soak {
        /// The environment it soaks in.
        env: EnvName,
        /// When the soak ends.
        ends: Timestamp,
    },
    /// Outside `require.window`.
    Window {
        /// The windows as written.
        windows: Vec<String>,
        /// When the next one opens.
        opens: Timestamp,
        /// That moment in the window's own time zone.
        opens_local: String,
    },
    /// The environment is frozen.
    Frozen {
        /// The freeze.
        freeze: Freeze,
    },
    /// The environment differs from the one `require.parity` names, beyond the release.
    Parity {
        /// The environment it must match.
        with: EnvName,
        /// The unexpected differences (`vars.REGION`, `facts.runtime`).
        differences: Vec<String>,
        /// When it is compared again (facts can change without an event).
        recheck: Timestamp,
    },
    /// `require.signoff`: the release's user acceptance in that environment is not complete.
    Signoff {
        /// The environment that signs it off.
        env: EnvName,
        /// Where it stands there, with the command that moves it on.
        progress: String,
    },
    /// `require.backup_within`: no restorable backup of the app's data here is that recent.
    Backup {
        /// What is missing, with the command that takes one.
        missing: String,
    },
    /// The watch after the switch was inconclusive; a person approves or rejects.
    Decision {
        /// What the watch saw.
        watched: String,
    },
}

impl Wait {
    /// The moment this wait ends by itself, if it does.
    pub fn until(&self) -> Option<Timestamp> {
        match self {
            Self::Soak { ends, .. } => Some(*ends),
            Self::Window { opens, .. } => Some(*opens),
            Self::Parity { recheck, .. } => Some(*recheck),
            _ => None,
        }
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Approvals {
                have,
                need,
                approvers,
                role,
            } => {
                write!(f, "{have} of {need} approvals")?;
                if !approvers.is_empty() {
                    write!(f, " (approved by {})", approvers.join(", "))?;
                }
                if let Some(role) = role {
                    write!(f, " from the role {role}")?;
                }
                Ok(())
            }
            Self::Soak { env, ends } => write!(f, "soak in {env} ends at {ends}"),
            Self::Window {
                windows,
                opens_local,
                ..
            } => write!(
                f,
                "deploy window opens {opens_local} ({})",
                windows.join("; ")
            ),
            Self::Frozen { freeze } => {
                let scope = freeze
                    .env
                    .as_ref()
                    .map_or("every environment".to_owned(), |e| e.to_string());
                write!(
                    f,
                    "{scope} is frozen by {} since {}: {} (shipgate unfreeze, or an admin promotes with --override REASON)",
                    freeze.by, freeze.since, freeze.reason
                )
            }
            Self::Parity {
                with, differences, ..
            } => write!(
                f,
                "parity with {with}: {} unexpected difference(s): {} (see shipgate diff; fix them, declare them in `differs`, or an admin promotes with --override REASON)",
                differences.len(),
                differences.join(", ")
            ),
            Self::Signoff { env, progress } => write!(f, "sign-off in {env}: {progress}"),
            Self::Backup { missing } => write!(f, "a backup: {missing}"),
            Self::Decision { watched } => write!(
                f,
                "a person to decide: {watched} (shipgate approve or shipgate reject)"
            ),
        }
    }
}

/// What is known about a pending promotion when its requirements are checked.
#[derive(Debug, Clone)]
pub struct EntryFacts<'a> {
    /// The environment before this one, where the release soaks.
    pub after: Option<&'a EnvName>,
    /// When the release was verified there (its latest success), if it is.
    pub verified_before_at: Option<Timestamp>,
    /// The approvals and rejections recorded for this promotion (entry stage).
    pub decisions: &'a [Decision],
    /// Freezes in force on this environment (its own and the all-environment one).
    pub freezes: &'a [Freeze],
    /// An admin lifted windows, freezes and parity for this promotion, with this reason.
    pub overridden: bool,
    /// With `require.parity`: the environment named and its unexpected differences now.
    pub parity: Option<(&'a EnvName, Vec<String>)>,
    /// With `require.signoff`: the environment named and, until the release's sign-off there
    /// is complete, where it stands.
    pub signoff: Option<(&'a EnvName, Option<String>)>,
    /// With `require.backup_within`: what is missing, until a recent enough restorable backup
    /// is there.
    pub backup: Option<String>,
    /// Now.
    pub now: Timestamp,
}

/// Everything the promotion still waits on; empty when it may deploy now.
pub fn waiting_on(req: &Requirements, facts: &EntryFacts<'_>) -> Vec<Wait> {
    let mut waits = Vec::new();
    if let Some(rule) = &req.approvals {
        let approvers = counted_approvers(rule, facts.decisions);
        if (approvers.len() as u32) < rule.count {
            waits.push(Wait::Approvals {
                have: approvers.len() as u32,
                need: rule.count,
                approvers,
                role: rule.role,
            });
        }
    }
    if let (Some(soak), Some(after)) = (req.soak, facts.after) {
        // Without a verification time the entry rule refuses the promotion anyway.
        if let Some(at) = facts.verified_before_at {
            let ends = at.checked_add(soak.as_std()).unwrap_or(Timestamp::MAX);
            if facts.now < ends {
                waits.push(Wait::Soak {
                    env: after.clone(),
                    ends,
                });
            }
        }
    }
    // Neither is lifted by an override: the business's word and the data's safety are not
    // windows.
    if let Some(missing) = &facts.backup {
        waits.push(Wait::Backup {
            missing: missing.clone(),
        });
    }
    if let Some((env, Some(progress))) = &facts.signoff {
        waits.push(Wait::Signoff {
            env: (*env).clone(),
            progress: progress.clone(),
        });
    }
    if !facts.overridden {
        if let Some(WindowState::Closed { opens }) =
            crate::window::state_of(&req.windows, facts.now)
        {
            let first = req.windows.iter().min_by_key(|w| match w.state(facts.now) {
                WindowState::Closed { opens } => opens,
                WindowState::Open { .. } => Timestamp::MAX,
            });
            waits.push(Wait::Window {
                windows: req.windows.iter().map(|w| w.as_str().to_owned()).collect(),
                opens,
                opens_local: first.map_or(opens.to_string(), |w: &DeployWindow| w.local(opens)),
            });
        }
        // The oldest freeze explains it; lifting it may leave another.
        if let Some(freeze) = facts.freezes.iter().min_by_key(|f| f.since) {
            waits.push(Wait::Frozen {
                freeze: freeze.clone(),
            });
        }
        if let Some((with, differences)) = &facts.parity
            && !differences.is_empty()
        {
            waits.push(Wait::Parity {
                with: (*with).clone(),
                differences: differences.clone(),
                recheck: facts.now.checked_add(PARITY_RECHECK).unwrap_or(facts.now),
            });
        }
    }
    waits
}

/// How often a promotion held by parity compares the environments again.
pub const PARITY_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The distinct approvers that count under `rule`, in the order they approved.
pub fn counted_approvers(rule: &ApprovalRule, decisions: &[Decision]) -> Vec<String> {
    let mut approvers: Vec<String> = Vec::new();
    for d in decisions.iter().filter(|d| d.verdict == Verdict::Approve) {
        let role_ok = rule
            .role
            .is_none_or(|r| d.role == r || d.role == Role::Admin);
        if role_ok && !approvers.contains(&d.actor) {
            approvers.push(d.actor.clone());
        }
    }
    approvers
}

/// Why a person may not approve or reject a promotion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionRefusal {
    /// Nobody may approve what they asked for.
    #[error(
        "{actor} asked for this {subject}, so {actor} may not approve it; another approver must (requester and approver are always different people)"
    )]
    OwnPromotion {
        /// The requester.
        actor: String,
        /// What they asked for (`promotion`, `flag change`).
        subject: &'static str,
    },
    /// Nobody may approve what an automatic promotion took on from them.
    #[error(
        "{actor} caused this {subject} (shipgate asked for it automatically after {actor}'s promotion into the environment before), so {actor} may not approve it; another approver must"
    )]
    CausedPromotion {
        /// The person behind it.
        actor: String,
        /// What they caused (`promotion`).
        subject: &'static str,
    },
    /// One person counts once.
    #[error("{actor} has already decided on this {subject} ({verdict}); each person decides once")]
    AlreadyDecided {
        /// Who.
        actor: String,
        /// What was decided on (`promotion`, `flag change`).
        subject: &'static str,
        /// What they said.
        verdict: &'static str,
    },
    /// The rule names a role the token does not have.
    #[error(
        "approvals into {env} must come from the role {role}; token `{actor}` has the role {has}"
    )]
    WrongRole {
        /// The environment.
        env: EnvName,
        /// The role required.
        role: Role,
        /// Who tried.
        actor: String,
        /// Their role.
        has: Role,
    },
    /// A rejection must say why.
    #[error("a rejection needs a comment saying why (--comment TEXT)")]
    RejectionWithoutComment,
}

/// A person's approval or rejection, before it is recorded.
#[derive(Debug, Clone, Copy)]
pub struct DecisionAsk<'a> {
    /// What is decided on, in words: `promotion`, `flag change`.
    pub subject: &'static str,
    /// Before the deploy or on a held watch.
    pub stage: Stage,
    /// The person who asked for it (the person of the token that asked; `shipgate` for an
    /// automatic promotion).
    pub requested_by: &'a str,
    /// For an automatic promotion, the people who caused it: those behind the promotion into
    /// the environment before, and so on back to a person.
    pub caused_by: &'a [String],
    /// Who decides.
    pub grant: &'a Grant,
    /// Approve or reject.
    pub verdict: Verdict,
    /// Why.
    pub comment: Option<&'a str>,
}

/// Whether this decision may be recorded, given the earlier ones of the same stage. Stage
/// `Watch` (a held verification) has no role rule beyond the caller's own permission.
pub fn check_decision(
    rule: Option<&ApprovalRule>,
    env: &EnvName,
    ask: &DecisionAsk<'_>,
    earlier: &[Decision],
) -> Result<(), DecisionRefusal> {
    let DecisionAsk {
        subject,
        stage,
        requested_by,
        caused_by,
        grant,
        verdict,
        comment,
    } = *ask;
    let person = grant.person();
    if verdict == Verdict::Reject && comment.is_none_or(|c| c.trim().is_empty()) {
        return Err(DecisionRefusal::RejectionWithoutComment);
    }
    if verdict == Verdict::Approve && person == requested_by {
        return Err(DecisionRefusal::OwnPromotion {
            actor: person.to_owned(),
            subject,
        });
    }
    if verdict == Verdict::Approve && caused_by.iter().any(|c| c == person) {
        return Err(DecisionRefusal::CausedPromotion {
            actor: person.to_owned(),
            subject,
        });
    }
    // Decisions are recorded under the person, so one person's tokens count once.
    if let Some(d) = earlier.iter().find(|d| d.actor == person) {
        return Err(DecisionRefusal::AlreadyDecided {
            actor: person.to_owned(),
            subject,
            verdict: d.verdict.past(),
        });
    }
    if let (Stage::Entry, Some(rule)) = (stage, rule)
        && let Some(role) = rule
            .role
            .filter(|r| *r != grant.role && grant.role != Role::Admin)
    {
        return Err(DecisionRefusal::WrongRole {
            env: env.clone(),
            role,
            actor: grant.name.clone(),
            has: grant.role,
        });
    }
    Ok(())
}

/// What the router counted for the new release since the switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct WatchFigures {
    /// Responses.
    pub requests: u64,
    /// 5xx responses among them.
    pub errors: u64,
    /// Estimated 99th percentile latency, if there were responses.
    pub p99_ms: Option<f64>,
}

impl WatchFigures {
    /// Errors over requests; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl fmt::Display for WatchFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} errors (error rate {:.4})",
            self.requests,
            self.errors,
            self.error_rate()
        )?;
        if let Some(p99) = self.p99_ms {
            write!(f, ", p99 {p99:.1}ms")?;
        }
        Ok(())
    }
}

/// One threshold of a watch against what was measured so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct WatchCheck {
    /// The setting (`verify.max_error_rate`).
    pub setting: String,
    /// Its value.
    pub limit: String,
    /// What was measured so far.
    pub measured: String,
    /// Whether the measurement is within it so far (for `verify.min_requests`: reached).
    pub within: bool,
}

impl fmt::Display for WatchCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match (self.within, self.setting.as_str()) {
            (true, _) => "ok",
            (false, "verify.min_requests") => "not yet",
            (false, _) => "OVER",
        };
        write!(
            f,
            "{} {} ({} {}: {verdict})",
            self.setting.trim_start_matches("verify."),
            self.measured,
            self.setting,
            self.limit
        )
    }
}

/// Each threshold of `rule` against the figures measured so far: the requests against
/// `verify.min_requests`, then the error rate and the p99 against their maximums when set.
pub fn watch_checks(rule: &WatchRule, figures: &WatchFigures) -> Vec<WatchCheck> {
    let mut checks = vec![WatchCheck {
        setting: "verify.min_requests".into(),
        limit: rule.min_requests.to_string(),
        measured: figures.requests.to_string(),
        within: figures.requests >= rule.min_requests,
    }];
    if let Some(max) = rule.max_error_rate {
        checks.push(WatchCheck {
            setting: "verify.max_error_rate".into(),
            limit: max.to_string(),
            measured: format!("{:.4}", figures.error_rate()),
            within: figures.error_rate() <= max,
        });
    }
    if let Some(max) = rule.max_p99 {
        let max_ms = max.as_std().as_secs_f64() * 1000.0;
        checks.push(WatchCheck {
            setting: "verify.max_p99".into(),
            limit: max.to_string(),
            measured: figures
                .p99_ms
                .map_or("-".to_owned(), |p| format!("{p:.1}ms")),
            within: figures.p99_ms.is_none_or(|p| p <= max_ms),
        });
    }
    checks
}

/// What to do when too few requests arrived during the watch to judge the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inconclusive {
    /// Accept the release.
    Pass,
    /// Roll back.
    Fail,
    /// Keep the release live and wait for a person to approve or reject.
    Hold,
}

impl Inconclusive {
    /// Parses `verify.inconclusive`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "pass" => Ok(Self::Pass),
            "fail" => Ok(Self::Fail),
            "hold" => Ok(Self::Hold),
            _ => Err(format!(
                "`{s}` is not an outcome: write \"pass\", \"fail\" or \"hold\""
            )),
        }
    }
}

/// The verdict on a watched release.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchVerdict {
    /// Keep watching.
    Continue,
    /// A threshold was crossed; roll back. The sentence names the figure and the threshold.
    Breach(String),
    /// The watch ended within every threshold.
    Pass(String),
    /// The watch ended with fewer than `min_requests`; the outcome follows `inconclusive`.
    Inconclusive(String),
}

/// Judges the figures so far; `ended` once the watch time is over. Thresholds are judged only
/// once `min_requests` arrived, so a single early error does not roll a release back.
pub fn judge(rule: &WatchRule, figures: &WatchFigures, ended: bool) -> WatchVerdict {
    if figures.requests >= rule.min_requests.max(1) {
        if let Some(max) = rule.max_error_rate
            && figures.error_rate() > max
        {
            return WatchVerdict::Breach(format!(
                "error rate {:.4} ({} of {} requests failed) is above verify.max_error_rate {max}",
                figures.error_rate(),
                figures.errors,
                figures.requests
            ));
        }
        if let (Some(max), Some(p99)) = (rule.max_p99, figures.p99_ms) {
            let max_ms = max.as_std().as_secs_f64() * 1000.0;
            if p99 > max_ms {
                return WatchVerdict::Breach(format!(
                    "p99 latency {p99:.1}ms (over {} requests) is above verify.max_p99 {max}",
                    figures.requests
                ));
            }
        }
    }
    if !ended {
        return WatchVerdict::Continue;
    }
    if figures.requests < rule.min_requests {
        return WatchVerdict::Inconclusive(format!(
            "only {} requests arrived during the {} watch, fewer than verify.min_requests {}",
            figures.requests, rule.watch, rule.min_requests
        ));
    }
    WatchVerdict::Pass(format!("watched for {}: {figures}", rule.watch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Duration;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn decision(actor: &str, role: Role, verdict: Verdict) -> Decision {
        Decision {
            actor: actor.into(),
            role,
            verdict,
            comment: None,
            at: at("2026-12-01T10:00:00Z"),
        }
    }

    fn facts<'a>(decisions: &'a [Decision], freezes: &'a [Freeze], now: &str) -> EntryFacts<'a> {
        EntryFacts {
            after: None,
            verified_before_at: None,
            decisions,
            freezes,
            overridden: false,
            parity: None,
            signoff: None,
            backup: None,
            now: at(now),
        }
    }

    fn grant(name: &str, role: Role) -> Grant {
        Grant {
            name: name.into(),
            role,
            envs: vec![],
            person: None,
            also: Vec::new(),
        }
    }

    #[test]
    fn approvals_count_distinct_people_of_the_named_role() {
        let rule = ApprovalRule {
            count: 2,
            role: Some(Role::Approver),
        };
        let req = Requirements {
            approvals: Some(rule.clone()),
            ..Default::default()
        };
        let ds = [
            decision("alice", Role::Approver, Verdict::Approve),
            decision("alice", Role::Approver, Verdict::Approve),
            decision("dave", Role::Deployer, Verdict::Approve),
        ];
        let waits = waiting_on(&req, &facts(&ds, &[], "2026-12-01T10:00:00Z"));
        assert_eq!(waits.len(), 1);
        assert_eq!(
            waits[0].to_string(),
            "1 of 2 approvals (approved by alice) from the role approver"
        );
        let ds = [
            decision("alice", Role::Approver, Verdict::Approve),
            decision("root", Role::Admin, Verdict::Approve),
        ];
        assert!(waiting_on(&req, &facts(&ds, &[], "2026-12-01T10:00:00Z")).is_empty());
    }

    #[test]
    fn nobody_approves_their_own_promotion_or_twice() {
        let env = EnvName::parse("production").unwrap();
        let rule = ApprovalRule {
            count: 1,
            role: None,
        };
        fn ask<'a>(
            grant: &'a Grant,
            verdict: Verdict,
            comment: Option<&'a str>,
        ) -> DecisionAsk<'a> {
            DecisionAsk {
                subject: "promotion",
                stage: Stage::Entry,
                requested_by: "carol",
                caused_by: &[],
                grant,
                verdict,
                comment,
            }
        }
        let check = |g: &Grant, verdict, comment, earlier: &[Decision]| {
            check_decision(Some(&rule), &env, &ask(g, verdict, comment), earlier)
        };
        let carol = grant("carol", Role::Admin);
        assert_eq!(
            check(&carol, Verdict::Approve, None, &[]),
            Err(DecisionRefusal::OwnPromotion {
                actor: "carol".into(),
                subject: "promotion",
            })
        );
        let alice = grant("alice", Role::Approver);
        assert!(check(&alice, Verdict::Approve, None, &[]).is_ok());
        let earlier = [decision("alice", Role::Approver, Verdict::Approve)];
        assert!(matches!(
            check(&alice, Verdict::Approve, None, &earlier),
            Err(DecisionRefusal::AlreadyDecided { .. })
        ));
        assert_eq!(
            check(&alice, Verdict::Reject, Some("  "), &[]),
            Err(DecisionRefusal::RejectionWithoutComment)
        );
        // The requester may reject (withdraw) what they asked for, with a reason.
        assert!(check(&carol, Verdict::Reject, Some("wrong build"), &[]).is_ok());
        let strict = ApprovalRule {
            count: 1,
            role: Some(Role::Approver),
        };
        let dave = grant("dave", Role::Deployer);
        let err = check_decision(
            Some(&strict),
            &env,
            &ask(&dave, Verdict::Approve, None),
            &[],
        );
        assert!(matches!(err, Err(DecisionRefusal::WrongRole { .. })));
    }

    #[test]
    fn a_person_never_approves_what_they_caused_nor_twice_through_another_token() {
        let env = EnvName::parse("production").unwrap();
        let rule = ApprovalRule {
            count: 2,
            role: None,
        };
        // shipgate asked for it after erin's promotion into staging.
        let caused_by = ["erin".to_owned()];
        let ask = |grant| DecisionAsk {
            subject: "promotion",
            stage: Stage::Entry,
            requested_by: "shipgate",
            caused_by: &caused_by,
            grant,
            verdict: Verdict::Approve,
            comment: None,
        };
        let erin_ci = Grant {
            person: Some("erin".into()),
            also: Vec::new(),
            ..grant("erin-ci", Role::Admin)
        };
        assert_eq!(
            check_decision(Some(&rule), &env, &ask(&erin_ci), &[]),
            Err(DecisionRefusal::CausedPromotion {
                actor: "erin".into(),
                subject: "promotion",
            })
        );
        let frank = grant("frank", Role::Approver);
        assert!(check_decision(Some(&rule), &env, &ask(&frank), &[]).is_ok());
        // frank's second token is still frank: decisions are recorded under the person.
        let frank_laptop = Grant {
            person: Some("frank".into()),
            also: Vec::new(),
            ..grant("frank-laptop", Role::Approver)
        };
        let earlier = [decision("frank", Role::Approver, Verdict::Approve)];
        assert!(matches!(
            check_decision(Some(&rule), &env, &ask(&frank_laptop), &earlier),
            Err(DecisionRefusal::AlreadyDecided { .. })
        ));
    }

    #[test]
    fn soak_ends_exactly_after_the_soak_time() {
        let staging = EnvName::parse("staging").unwrap();
        let req = Requirements {
            soak: Some(Duration::parse("10m").unwrap()),
            ..Default::default()
        };
        let mut f = facts(&[], &[], "2026-12-01T10:09:59Z");
        f.after = Some(&staging);
        f.verified_before_at = Some(at("2026-12-01T10:00:00Z"));
        let waits = waiting_on(&req, &f);
        assert_eq!(waits[0].until(), Some(at("2026-12-01T10:10:00Z")));
        assert_eq!(
            waits[0].to_string(),
            "soak in staging ends at 2026-12-01T10:10:00Z"
        );
        f.now = at("2026-12-01T10:10:00Z");
        assert!(waiting_on(&req, &f).is_empty());
    }

    #[test]
    fn windows_and_freezes_wait_unless_overridden() {
        let req = Requirements {
            windows: vec![DeployWindow::parse("Mon-Fri 09:00-17:00 Europe/Paris").unwrap()],
            ..Default::default()
        };
        // Saturday 2026-12-05, 12:00 UTC.
        let mut f = facts(&[], &[], "2026-12-05T12:00:00Z");
        let waits = waiting_on(&req, &f);
        assert_eq!(waits[0].until(), Some(at("2026-12-07T08:00:00Z")));
        assert!(
            waits[0]
                .to_string()
                .starts_with("deploy window opens Mon 2026-12-07 09:00 Europe/Paris"),
            "{}",
            waits[0]
        );
        let freezes = [Freeze {
            env: None,
            reason: "year-end".into(),
            by: "root".into(),
            since: at("2026-12-01T00:00:00Z"),
        }];
        f.freezes = &freezes;
        f.now = at("2026-12-07T10:00:00Z");
        let waits = waiting_on(&req, &f);
        assert_eq!(waits.len(), 1);
        assert!(
            waits[0]
                .to_string()
                .starts_with("every environment is frozen by root")
        );
        assert_eq!(waits[0].until(), None);
        f.overridden = true;
        f.now = at("2026-12-05T12:00:00Z");
        assert!(waiting_on(&req, &f).is_empty());
    }

    #[test]
    fn a_signoff_elsewhere_is_waited_for_even_with_an_override() {
        let uat = EnvName::parse("uat").unwrap();
        let req = Requirements {
            signoff: Some(uat.clone()),
            ..Default::default()
        };
        let mut f = facts(&[], &[], "2026-12-01T10:00:00Z");
        f.signoff = Some((&uat, Some("1 of 3 scenarios passed".into())));
        f.overridden = true;
        let waits = waiting_on(&req, &f);
        assert_eq!(
            waits,
            vec![Wait::Signoff {
                env: uat.clone(),
                progress: "1 of 3 scenarios passed".into()
            }]
        );
        assert_eq!(
            waits[0].to_string(),
            "sign-off in uat: 1 of 3 scenarios passed"
        );
        f.signoff = Some((&uat, None));
        assert!(waiting_on(&req, &f).is_empty());
    }

    #[test]
    fn parity_waits_until_no_difference_is_left_unless_overridden() {
        let staging = EnvName::parse("staging").unwrap();
        let req = Requirements {
            parity: Some(staging.clone()),
            ..Default::default()
        };
        let mut f = facts(&[], &[], "2026-12-01T10:00:00Z");
        f.parity = Some((&staging, vec!["vars.REGION".into()]));
        let waits = waiting_on(&req, &f);
        assert!(
            waits[0]
                .to_string()
                .starts_with("parity with staging: 1 unexpected difference(s): vars.REGION"),
            "{}",
            waits[0]
        );
        assert_eq!(waits[0].until(), Some(at("2026-12-01T10:00:05Z")));
        f.overridden = true;
        assert!(waiting_on(&req, &f).is_empty());
        f.overridden = false;
        f.parity = Some((&staging, vec![]));
        assert!(waiting_on(&req, &f).is_empty());
    }

    #[test]
    fn watch_judges_only_with_enough_requests() {
        let rule = WatchRule {
            watch: Duration::parse("2m").unwrap(),
            max_error_rate: Some(0.01),
            max_p99: Some(Duration::parse("500ms").unwrap()),
            min_requests: 20,
            inconclusive: Inconclusive::Fail,
            traffic: None,
        };
        let f = |requests, errors, p99| WatchFigures {
            requests,
            errors,
            p99_ms: p99,
        };
        assert_eq!(judge(&rule, &f(5, 5, None), false), WatchVerdict::Continue);
        let WatchVerdict::Breach(why) = judge(&rule, &f(40, 10, Some(3.0)), false) else {
            panic!("a 25% error rate must breach 1%");
        };
        assert_eq!(
            why,
            "error rate 0.2500 (10 of 40 requests failed) is above verify.max_error_rate 0.01"
        );
        assert!(matches!(
            judge(&rule, &f(40, 0, Some(900.0)), false),
            WatchVerdict::Breach(w) if w.contains("p99 latency 900.0ms")
        ));
        assert!(matches!(
            judge(&rule, &f(3, 0, None), true),
            WatchVerdict::Inconclusive(w) if w.contains("only 3 requests")
        ));
        assert!(matches!(
            judge(&rule, &f(100, 1, Some(10.0)), true),
            WatchVerdict::Pass(_)
        ));
    }
}
