//! User acceptance sign-off: after its verification, a release waits in `signing_off` until
//! someone with the environment's sign-off role passed each of its scenarios. The rules of who
//! may sign what, and what a sheet of sign-offs adds up to, live here; the store keeps the
//! sheet and the engine waits on it.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{Grant, PromotionId, Role};

/// What a tester saw when they walked through a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum SignoffVerdict {
    /// It works the way the business needs.
    Pass,
    /// It does not; the note says what was seen.
    Fail,
}

impl SignoffVerdict {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

impl fmt::Display for SignoffVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scenario passed or failed by one person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct SignoffEntry {
    /// The scenario, as the config names it.
    pub scenario: String,
    /// The person who signed (their token's person, or its name).
    pub by: String,
    /// The token they signed with.
    pub token: String,
    /// Pass or fail.
    pub verdict: SignoffVerdict,
    /// What they saw, in their words (always given with a fail).
    pub note: Option<String>,
    /// When.
    pub at: Timestamp,
}

/// The sign-off of one promotion: what was asked, of whom, and what was signed so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct SignoffSheet {
    /// The promotion signed off.
    pub promotion_id: PromotionId,
    /// The role that may sign (an admin always may), as configured when it was asked for.
    pub role: Role,
    /// The scenarios, as configured when it was asked for (a reload does not change them).
    pub scenarios: Vec<String>,
    /// When the release began to wait for sign-off.
    pub requested_at: Timestamp,
    /// Every pass and fail, oldest first.
    pub entries: Vec<SignoffEntry>,
}

/// What a sheet adds up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A scenario failed: the promotion fails.
    Failed(&'a SignoffEntry),
    /// Every scenario has a pass.
    Complete,
    /// Still waiting: these scenarios have no pass yet.
    Open(Vec<&'a str>),
}

impl SignoffSheet {
    /// Whether it failed, is complete, or which scenarios still wait.
    pub fn outcome(&self) -> Outcome<'_> {
        if let Some(fail) = self
            .entries
            .iter()
            .find(|e| e.verdict == SignoffVerdict::Fail)
        {
            return Outcome::Failed(fail);
        }
        let open: Vec<&str> = self
            .scenarios
            .iter()
            .filter(|s| !self.entries.iter().any(|e| &e.scenario == *s))
            .map(String::as_str)
            .collect();
        if open.is_empty() {
            Outcome::Complete
        } else {
            Outcome::Open(open)
        }
    }

    /// How far it is, in words: `2 of 3 scenarios passed`.
    pub fn progress(&self) -> String {
        match self.outcome() {
            Outcome::Failed(e) => format!(
                "`{}` failed by {}: {}",
                e.scenario,
                e.by,
                e.note.as_deref().unwrap_or("")
            ),
            Outcome::Complete => format!("all {} scenarios passed", self.scenarios.len()),
            Outcome::Open(open) => format!(
                "{} of {} scenarios passed; waiting for {}",
                self.scenarios.len() - open.len(),
                self.scenarios.len(),
                open.iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A pass or a fail before it is recorded.
#[derive(Debug, Clone, Copy)]
pub struct SignoffAsk<'a> {
    /// Who signs.
    pub grant: &'a Grant,
    /// The scenario.
    pub scenario: &'a str,
    /// Pass or fail.
    pub verdict: SignoffVerdict,
    /// What they saw.
    pub note: Option<&'a str>,
    /// The person who asked for the promotion, and those who caused an automatic one.
    pub requested_by: &'a [String],
}

/// Why a pass or a fail may not be recorded, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignoffRefusal {
    /// The scenario is not on the sheet.
    #[error("`{scenario}` is not a scenario of this sign-off; name one of: {known}")]
    UnknownScenario {
        /// What was asked.
        scenario: String,
        /// The sheet's scenarios.
        known: String,
    },
    /// A fail says what was seen.
    #[error(
        "a fail needs a note saying what you saw (on the command line: --note \"the PDF is blank\")"
    )]
    FailWithoutNote,
    /// The token's role may not sign here.
    #[error(
        "signing off here needs the role {role} (or admin); {token} is a {has}: ask a tester for a token with that role"
    )]
    WrongRole {
        /// The role needed.
        role: Role,
        /// The token.
        token: String,
        /// Its role.
        has: Role,
    },
    /// Nobody signs off their own promotion.
    #[error(
        "{0} asked for this promotion (or caused it), so someone else must sign it off, as with approvals"
    )]
    OwnPromotion(String),
    /// A person signs each scenario once.
    #[error(
        "{person} already signed `{scenario}` ({verdict} at {at}); each person signs a scenario once"
    )]
    AlreadySigned {
        /// Who.
        person: String,
        /// What.
        scenario: String,
        /// How they signed it.
        verdict: SignoffVerdict,
        /// When.
        at: Timestamp,
    },
}

/// Whether `ask` may be added to `sheet`.
pub fn check(sheet: &SignoffSheet, ask: &SignoffAsk<'_>) -> Result<(), SignoffRefusal> {
    if !sheet.scenarios.iter().any(|s| s == ask.scenario) {
        return Err(SignoffRefusal::UnknownScenario {
            scenario: ask.scenario.to_owned(),
            known: sheet
                .scenarios
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if ask.verdict == SignoffVerdict::Fail && ask.note.is_none_or(|n| n.trim().is_empty()) {
        return Err(SignoffRefusal::FailWithoutNote);
    }
    if ask.grant.role != sheet.role && ask.grant.role != Role::Admin {
        return Err(SignoffRefusal::WrongRole {
            role: sheet.role,
            token: ask.grant.name.clone(),
            has: ask.grant.role,
        });
    }
    let person = ask.grant.person();
    if ask.requested_by.iter().any(|r| r == person) {
        return Err(SignoffRefusal::OwnPromotion(person.to_owned()));
    }
    if let Some(e) = sheet
        .entries
        .iter()
        .find(|e| e.by == person && e.scenario == ask.scenario)
    {
        return Err(SignoffRefusal::AlreadySigned {
            person: person.to_owned(),
            scenario: e.scenario.clone(),
            verdict: e.verdict,
            at: e.at,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str, role: Role) -> Grant {
        Grant {
            name: name.into(),
            role,
            envs: vec![],
            person: None,
            also: Vec::new(),
        }
    }

    fn sheet() -> SignoffSheet {
        SignoffSheet {
            promotion_id: PromotionId(7),
            role: Role::Tester,
            scenarios: vec!["checkout".into(), "invoice PDF opens".into()],
            requested_at: "2026-12-07T10:00:00Z".parse().unwrap(),
            entries: vec![],
        }
    }

    fn entry(scenario: &str, by: &str, verdict: SignoffVerdict) -> SignoffEntry {
        SignoffEntry {
            scenario: scenario.into(),
            by: by.into(),
            token: by.into(),
            verdict,
            note: Some("seen".into()),
            at: "2026-12-07T11:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_sheet_completes_with_a_pass_for_each_scenario_and_fails_on_one_fail() {
        let mut s = sheet();
        assert_eq!(
            s.outcome(),
            Outcome::Open(vec!["checkout", "invoice PDF opens"])
        );
        s.entries
            .push(entry("checkout", "tess", SignoffVerdict::Pass));
        s.entries
            .push(entry("checkout", "tom", SignoffVerdict::Pass));
        assert_eq!(s.outcome(), Outcome::Open(vec!["invoice PDF opens"]));
        assert_eq!(
            s.progress(),
            "1 of 2 scenarios passed; waiting for `invoice PDF opens`"
        );
        s.entries
            .push(entry("invoice PDF opens", "tom", SignoffVerdict::Pass));
        assert_eq!(s.outcome(), Outcome::Complete);
        s.entries
            .push(entry("checkout", "ann", SignoffVerdict::Fail));
        assert!(matches!(s.outcome(), Outcome::Failed(e) if e.by == "ann"));
    }

    #[test]
    fn each_refusal_says_what_to_do() {
        let mut s = sheet();
        s.entries
            .push(entry("checkout", "tess", SignoffVerdict::Pass));
        let tess = grant("tess", Role::Tester);
        let requested_by = vec!["dev".to_owned()];
        let ask = |g, scenario, verdict, note| SignoffAsk {
            grant: g,
            scenario,
            verdict,
            note,
            requested_by: &requested_by,
        };
        let refused = |a: SignoffAsk<'_>| check(&s, &a).unwrap_err().to_string();
        assert!(
            refused(ask(&tess, "login", SignoffVerdict::Pass, None))
                .contains("name one of: \"checkout\", \"invoice PDF opens\"")
        );
        assert!(
            refused(ask(&tess, "checkout", SignoffVerdict::Fail, Some(" "))).contains("--note")
        );
        assert!(refused(ask(&tess, "checkout", SignoffVerdict::Pass, None)).contains("once"));
        let deployer = grant("dan", Role::Deployer);
        assert!(
            refused(ask(&deployer, "checkout", SignoffVerdict::Pass, None))
                .contains("needs the role tester (or admin)")
        );
        let dev = Grant {
            person: Some("dev".into()),
            also: Vec::new(),
            ..grant("dev-laptop", Role::Admin)
        };
        assert!(
            refused(ask(&dev, "checkout", SignoffVerdict::Pass, None)).contains("someone else")
        );
        // Another scenario, another person, an admin: each may.
        assert!(
            check(
                &s,
                &ask(&tess, "invoice PDF opens", SignoffVerdict::Pass, None)
            )
            .is_ok()
        );
        let tom = grant("tom", Role::Tester);
        assert!(
            check(
                &s,
                &ask(&tom, "checkout", SignoffVerdict::Fail, Some("500"))
            )
            .is_ok()
        );
        let admin = grant("root", Role::Admin);
        assert!(check(&s, &ask(&admin, "checkout", SignoffVerdict::Pass, None)).is_ok());
    }
}
