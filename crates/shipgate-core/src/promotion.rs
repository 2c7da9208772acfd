//! The promotion state machine and the rule that decides whether a release may enter an
//! environment.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Config, Digest, EnvName, ReleaseRef};

/// Where a promotion stands. A promotion only ever moves forward along [`Self::can_become`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum PromotionState {
    /// Waiting on requirements or on another promotion into the same environment; nothing has
    /// been started yet.
    Pending,
    /// An instance of the release is being started and health-checked; traffic has not moved.
    Deploying,
    /// Traffic has moved to the release and its verification is running.
    Verifying,
    /// The release is live and verified; it waits for every scenario of the environment's
    /// user acceptance to be passed by a tester (`[environments.NAME.signoff]`).
    SigningOff,
    /// The release is live and verified in the environment.
    Succeeded,
    /// Deploy or verification failed; the environment kept (or went back to) what it had.
    Failed,
    /// The release was verified here, then the environment was rolled back away from it.
    RolledBack,
    /// Stopped by a person before it started.
    Cancelled,
    /// A newer request for the same app and environment replaced it while it was pending.
    Superseded,
}

impl PromotionState {
    /// Every state, in flow order.
    pub const ALL: [PromotionState; 9] = [
        Self::Pending,
        Self::Deploying,
        Self::Verifying,
        Self::SigningOff,
        Self::Succeeded,
        Self::Failed,
        Self::RolledBack,
        Self::Cancelled,
        Self::Superseded,
    ];

    /// The states of a promotion not finished yet.
    pub const UNFINISHED: [PromotionState; 4] = [
        Self::Pending,
        Self::Deploying,
        Self::Verifying,
        Self::SigningOff,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Deploying => "deploying",
            Self::Verifying => "verifying",
            Self::SigningOff => "signing_off",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True once nothing more will happen to the promotion by itself.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::Pending | Self::Deploying | Self::Verifying | Self::SigningOff
        )
    }

    /// True while the promotion holds its environment (at most one per app and environment).
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Deploying | Self::Verifying | Self::SigningOff)
    }

    /// Whether a promotion in this state may move to `next`.
    pub fn can_become(self, next: Self) -> bool {
        use PromotionState::*;
        matches!(
            (self, next),
            (Pending, Deploying | Failed | Cancelled | Superseded)
                | (Deploying, Verifying | Failed)
                | (Verifying, SigningOff | Succeeded | Failed)
                | (SigningOff, Succeeded | Failed)
                | (Succeeded, RolledBack)
        )
    }
}

impl fmt::Display for PromotionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a promotion was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum PromotionKind {
    /// `shipgate promote`: the release must be verified in the environment before.
    Promote,
    /// `shipgate rollback`: return to a release that was live here before.
    Rollback,
    /// `shipgate drift --heal`: start the recorded live release again from its artifact.
    Redeploy,
    /// `shipgate promote --hotfix`: verified in the environment's hotfix `from` only, and some
    /// requirements skipped (`[environments.NAME.hotfix]`); approvals never.
    Hotfix,
}

impl PromotionKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Rollback => "rollback",
            Self::Redeploy => "redeploy",
            Self::Hotfix => "hotfix",
        }
    }

    /// Whether it brings a release forward into an environment (a promotion or a hotfix), as
    /// opposed to going back or starting the same one again.
    pub fn is_forward(self) -> bool {
        matches!(self, Self::Promote | Self::Hotfix)
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Promote, Self::Rollback, Self::Redeploy, Self::Hotfix]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Why a release may not enter an environment, with the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRefusal {
    /// The config has no such app.
    #[error("app `{0}` is not in the config (add [apps.{0}] to shipgate.toml)")]
    UnknownApp(String),
    /// The config has no such environment.
    #[error("environment `{env}` is not in the config (known: {known})")]
    UnknownEnvironment {
        /// The name asked for.
        env: String,
        /// The names that exist.
        known: String,
    },
    /// The release has not passed the environment before this one.
    #[error(
        "{release} is not verified in {after} yet (promote it there first: shipgate promote {release} --to {after})"
    )]
    NotVerifiedBefore {
        /// The release asked for.
        release: ReleaseRef,
        /// The environment it must pass first.
        after: EnvName,
    },
    /// A hotfix into an environment that has no hotfix lane.
    #[error(
        "environment `{0}` takes no hotfix: add [environments.{0}.hotfix] with `from`, `skip` and `role` to the config, or promote the release through the flow"
    )]
    NoHotfixLane(String),
    /// The release passed the environment before, which was then rolled back away from it.
    #[error(
        "{release} was rolled back in {after}, so it may not go further (promote it there again first: shipgate promote {release} --to {after})"
    )]
    RolledBackBefore {
        /// The release asked for.
        release: ReleaseRef,
        /// The environment that rolled it back.
        after: EnvName,
    },
}

/// Where a release stands in one environment, by its latest promotion there that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It never succeeded there.
    Unverified,
    /// It succeeded there (with this digest) and was not rolled back since.
    Verified(Digest),
    /// It succeeded there, then the environment was rolled back away from it.
    RolledBack(Digest),
}

impl Standing {
    /// The digest verified there, unless rolled back since.
    pub fn verified(&self) -> Option<&Digest> {
        match self {
            Self::Verified(d) => Some(d),
            _ => None,
        }
    }
}

/// Decides whether `release` (with `digest`) may be promoted into `env`.
///
/// `standing(env)` answers where this release stands in `env`; only the environment named in
/// `after` is asked, since entering it required the one before.
pub fn check_entry(
    config: &Config,
    release: &ReleaseRef,
    digest: &Digest,
    env: &EnvName,
    standing: impl FnOnce(&EnvName) -> Standing,
) -> Result<(), EntryRefusal> {
    if config.app(&release.app).is_none() {
        return Err(EntryRefusal::UnknownApp(release.app.to_string()));
    }
    let Some(environment) = config.environment(env) else {
        let known: Vec<&str> = config
            .environments
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        return Err(EntryRefusal::UnknownEnvironment {
            env: env.to_string(),
            known: known.join(", "),
        });
    };
    let Some(after) = &environment.after else {
        return Ok(());
    };
    let refusal = match standing(after) {
        Standing::Verified(d) if &d == digest => return Ok(()),
        Standing::RolledBack(d) if &d == digest => EntryRefusal::RolledBackBefore {
            release: release.clone(),
            after: after.clone(),
        },
        _ => EntryRefusal::NotVerifiedBefore {
            release: release.clone(),
            after: after.clone(),
        },
    };
    Err(refusal)
}

/// Decides whether `release` may enter `env` as a hotfix: `env` has a hotfix lane and the
/// release is verified (this digest) in the lane's `from`, whatever lies between.
pub fn check_hotfix_entry(
    config: &Config,
    release: &ReleaseRef,
    digest: &Digest,
    env: &EnvName,
    standing: impl FnOnce(&EnvName) -> Standing,
) -> Result<(), EntryRefusal> {
    check_entry(config, release, digest, env, |_| Standing::Unverified).or_else(|e| match e {
        EntryRefusal::NotVerifiedBefore { .. } | EntryRefusal::RolledBackBefore { .. } => Ok(()),
        other => Err(other),
    })?;
    let Some(lane) = config.environment(env).and_then(|e| e.hotfix.as_ref()) else {
        return Err(EntryRefusal::NoHotfixLane(env.to_string()));
    };
    match standing(&lane.from) {
        Standing::Verified(d) if &d == digest => Ok(()),
        _ => Err(EntryRefusal::NotVerifiedBefore {
            release: release.clone(),
            after: lane.from.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(crate::config::EXAMPLE, Path::new("/p")).unwrap()
    }

    #[test]
    fn terminal_states_never_move_except_rollback() {
        for from in PromotionState::ALL {
            for to in PromotionState::ALL {
                if from.is_terminal() && from.can_become(to) {
                    assert_eq!(
                        (from, to),
                        (PromotionState::Succeeded, PromotionState::RolledBack)
                    );
                }
            }
            assert_eq!(PromotionState::parse(from.as_str()), Some(from));
        }
    }

    #[test]
    fn entry_needs_same_digest_in_after() {
        let c = config();
        let r = ReleaseRef::parse("web@1.0.0").unwrap();
        let d = Digest::from_sha256(&[1; 32]);
        let other = Digest::from_sha256(&[2; 32]);
        let dev = EnvName::parse("development").unwrap();
        let prod = EnvName::parse("production").unwrap();
        assert!(check_entry(&c, &r, &d, &dev, |_| Standing::Unverified).is_ok());
        let err = check_entry(&c, &r, &d, &prod, |_| Standing::Unverified).unwrap_err();
        assert_eq!(
            err.to_string(),
            "web@1.0.0 is not verified in staging yet (promote it there first: shipgate promote web@1.0.0 --to staging)"
        );
        assert!(check_entry(&c, &r, &d, &prod, |_| Standing::Verified(other.clone())).is_err());
        let err = check_entry(&c, &r, &d, &prod, |_| Standing::RolledBack(d.clone())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("web@1.0.0 was rolled back in staging"),
            "{err}"
        );
        assert!(
            check_entry(&c, &r, &d, &prod, |e| if e.as_str() == "staging" {
                Standing::Verified(d.clone())
            } else {
                Standing::Unverified
            })
            .is_ok()
        );
    }
}
