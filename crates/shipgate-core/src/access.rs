//! Who may do what: roles, environment scopes and the rule that decides a request.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{EnvName, EnvScope};

/// What a token's holder is trusted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Role {
    /// Reads everything in scope; changes nothing.
    Viewer,
    /// A viewer who may also register releases, promote and roll back.
    Deployer,
    /// A viewer who may also approve or reject promotions.
    Approver,
    /// A viewer who may also sign off a release's scenarios in user acceptance
    /// (`[environments.NAME.signoff]`).
    Tester,
    /// Everything, including tokens (when not limited to environments).
    Admin,
}

impl Role {
    /// Every role, least trusted first.
    pub const ALL: [Role; 5] = [
        Self::Viewer,
        Self::Deployer,
        Self::Approver,
        Self::Tester,
        Self::Admin,
    ];

    /// The name stored and typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Deployer => "deployer",
            Self::Approver => "approver",
            Self::Tester => "tester",
            Self::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a role: use viewer, deployer, approver, tester or admin")
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a request does, as far as permission goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read state, history, logs, events or metrics.
    Read,
    /// Register a release.
    RegisterRelease,
    /// Put a release into an environment.
    Promote,
    /// Return an environment to an earlier release.
    Rollback,
    /// Approve or reject a promotion.
    Approve,
    /// Freeze or unfreeze an environment (all of them when no environment is named).
    Freeze,
    /// Lift deploy windows and freezes for one promotion, with a reason.
    Override,
    /// Create, list or revoke tokens.
    ManageTokens,
    /// Add or remove hosts.
    ManageHosts,
    /// Reload the server's config file.
    Reload,
    /// Remove what retention no longer keeps (`shipgate gc`).
    CollectGarbage,
    /// Create, extend or delete an on-demand environment.
    OnDemand,
    /// Take a backup of an environment's data (and its drill).
    TakeBackup,
    /// Replace an environment's data with a backup.
    RestoreBackup,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::RegisterRelease => "register releases",
            Self::Promote => "promote",
            Self::Rollback => "roll back",
            Self::Approve => "approve or reject promotions and flag changes",
            Self::Freeze => "freeze or unfreeze environments",
            Self::Override => "override deploy windows and freezes",
            Self::ManageTokens => "manage tokens",
            Self::ManageHosts => "add or remove hosts",
            Self::Reload => "reload the config",
            Self::CollectGarbage => "remove old releases and logs",
            Self::OnDemand => "create, extend or delete on-demand environments",
            Self::TakeBackup => "take backups",
            Self::RestoreBackup => "restore backups",
        }
    }

    /// The roles that may do it.
    fn roles(self) -> &'static [Role] {
        match self {
            Self::Read => &Role::ALL,
            Self::RegisterRelease
            | Self::Promote
            | Self::Rollback
            | Self::OnDemand
            | Self::TakeBackup => &[Role::Deployer, Role::Admin],
            Self::Approve | Self::Freeze => &[Role::Approver, Role::Admin],
            Self::Override
            | Self::ManageTokens
            | Self::ManageHosts
            | Self::Reload
            | Self::CollectGarbage
            | Self::RestoreBackup => &[Role::Admin],
        }
    }
}

/// A token's role and the environments it is limited to (none: all of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The token's name (the actor of what it does).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The environments it may act on; empty means every one.
    pub envs: Vec<EnvScope>,
    /// The person it belongs to, when not the one its name says.
    #[serde(default)]
    pub person: Option<String>,
    /// Further roles of the same holder, each with its environments: a person signed in through
    /// the identity provider has one for each of their groups that maps to a role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Binding>,
}

/// One role, limited to some environments (none: all of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The role.
    pub role: Role,
    /// The environments it holds in; empty means every one.
    pub envs: Vec<EnvScope>,
}

impl Binding {
    /// Whether it holds in `env` (with no environment: only when it holds in every one).
    pub fn covers(&self, env: Option<&EnvName>) -> bool {
        match env {
            Some(env) => self.envs.is_empty() || self.envs.iter().any(|s| s.covers(env)),
            None => self.envs.is_empty(),
        }
    }
}

/// Why a request was refused, with whom to ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The role does not allow the action.
    #[error(
        "token `{name}` has the role {role}, which may not {action}; use a token with the role {allowed}"
    )]
    Role {
        /// The token.
        name: String,
        /// Its role.
        role: Role,
        /// What it tried.
        action: &'static str,
        /// The roles that may.
        allowed: String,
    },
    /// The environment is outside the token's scope.
    #[error("token `{name}` is limited to {scope}; it may not act on {env}")]
    Scope {
        /// The token.
        name: String,
        /// Its environments.
        scope: String,
        /// The environment asked for.
        env: EnvName,
    },
}

impl Grant {
    /// The person behind the token: its `person`, or its name.
    pub fn person(&self) -> &str {
        self.person.as_deref().unwrap_or(&self.name)
    }

    /// Every role it holds, the first one first.
    pub fn bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        std::iter::once(Binding {
            role: self.role,
            envs: self.envs.clone(),
        })
        .chain(self.also.iter().cloned())
    }

    /// Whether it holds `role` in `env` (with no environment: in every one).
    pub fn has_role(&self, role: Role, env: Option<&EnvName>) -> bool {
        self.bindings().any(|b| b.role == role && b.covers(env))
    }

    /// The grant as one of its roles: the first that may do `action` on `env`, else the first
    /// that holds in `env`, else itself. What is recorded (an approval's role, a flag change's)
    /// is the role that acted.
    pub fn acting(&self, action: Action, env: Option<&EnvName>) -> Grant {
        if self.also.is_empty() {
            return self.clone();
        }
        self.bindings()
            .map(|b| self.as_one(b))
            .find(|g| g.check(action, env).is_ok())
            .or_else(|| {
                self.bindings()
                    .find(|b| b.covers(env))
                    .map(|b| self.as_one(b))
            })
            .unwrap_or_else(|| self.clone())
    }

    /// The grant as its role in `env`: the first of `prefer` it holds there, else any role it
    /// holds there, else itself. Where a rule asks for a role (a sign-off's, a hotfix lane's,
    /// an approval's, an admin for production's faults), a person with several roles is judged
    /// by the one they hold in that environment, never by a role held elsewhere.
    pub fn in_env(&self, env: &EnvName, prefer: &[Role]) -> Grant {
        if self.also.is_empty() {
            return self.clone();
        }
        prefer
            .iter()
            .find_map(|r| {
                self.bindings()
                    .find(|b| b.role == *r && b.covers(Some(env)))
            })
            .or_else(|| self.bindings().find(|b| b.covers(Some(env))))
            .map(|b| self.as_one(b))
            .unwrap_or_else(|| self.clone())
    }

    fn as_one(&self, b: Binding) -> Grant {
        Grant {
            role: b.role,
            envs: b.envs,
            also: Vec::new(),
            ..self.clone()
        }
    }

    /// Whether records of `env` are in its scope (any of its roles).
    pub fn sees(&self, env: &EnvName) -> bool {
        self.bindings().any(|b| b.covers(Some(env)))
    }

    /// Whether the token may do `action`, on `env` when the action concerns one (with any of
    /// its roles). Managing tokens needs an admin token limited to no environment, so no scoped
    /// token can widen itself; freezing every environment at once needs a token limited to none.
    pub fn check(&self, action: Action, env: Option<&EnvName>) -> Result<(), Denied> {
        let first = self.check_one(action, env);
        if first.is_ok() || self.also.is_empty() {
            return first;
        }
        if self.acting(action, env).check_one(action, env).is_ok() {
            return Ok(());
        }
        first
    }

    fn check_one(&self, action: Action, env: Option<&EnvName>) -> Result<(), Denied> {
        let scoped = !self.envs.is_empty();
        let unscoped_only = matches!(
            action,
            Action::ManageTokens | Action::ManageHosts | Action::Reload
        ) || (action == Action::Freeze && env.is_none());
        let role_ok = action.roles().contains(&self.role) && !(unscoped_only && scoped);
        if !role_ok {
            let allowed: Vec<&str> = action.roles().iter().map(|r| r.as_str()).collect();
            let allowed = if unscoped_only {
                format!("{}, limited to no environment", allowed.join(" or "))
            } else {
                allowed.join(" or ")
            };
            return Err(Denied::Role {
                name: self.name.clone(),
                role: self.role,
                action: action.describe(),
                allowed,
            });
        }
        match env {
            Some(env) if scoped && !self.envs.iter().any(|s| s.covers(env)) => {
                let scope: Vec<&str> = self.envs.iter().map(EnvScope::as_str).collect();
                Err(Denied::Scope {
                    name: self.name.clone(),
                    scope: scope.join(", "),
                    env: env.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Why a token may not be revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeRefusal {
    /// Revoking it would leave no admin token limited to no environment, and so nobody who
    /// could make or revoke tokens again.
    #[error(
        "`{0}` is the last admin token limited to no environment; create another one first (shipgate token create NAME --role admin), then revoke this one"
    )]
    LastUnscopedAdmin(String),
    /// The request comes with the very token it would revoke, which would lock the caller out
    /// half-way through what they are doing.
    #[error(
        "`{0}` is the token this request comes with; revoke it with another admin token (a token never revokes itself)"
    )]
    Itself(String),
}

/// Whether the token `name` may be revoked by the token `by`, given every token still active
/// (`active`, which includes both). The last unscoped admin must stay: without it no one can
/// manage tokens; and no token revokes itself.
pub fn may_revoke(active: &[Grant], name: &str, by: &str) -> Result<(), RevokeRefusal> {
    let unscoped_admin = |g: &&Grant| g.role == Role::Admin && g.envs.is_empty();
    let is_one = active.iter().filter(unscoped_admin).any(|g| g.name == name);
    let others = active
        .iter()
        .filter(unscoped_admin)
        .filter(|g| g.name != name)
        .count();
    if is_one && others == 0 {
        return Err(RevokeRefusal::LastUnscopedAdmin(name.to_owned()));
    }
    if name == by {
        return Err(RevokeRefusal::Itself(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, envs: &[&str]) -> Grant {
        Grant {
            name: "t".into(),
            role,
            envs: envs.iter().map(|e| EnvScope::parse(e).unwrap()).collect(),
            person: None,
            also: Vec::new(),
        }
    }

    #[test]
    fn roles_and_scopes() {
        let dev = EnvName::parse("development").unwrap();
        let prod = EnvName::parse("production").unwrap();
        let viewer = grant(Role::Viewer, &[]);
        assert!(viewer.check(Action::Read, Some(&prod)).is_ok());
        let err = viewer.check(Action::Promote, Some(&dev)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token `t` has the role viewer, which may not promote; use a token with the role deployer or admin"
        );
        let deployer = grant(Role::Deployer, &["development"]);
        assert!(deployer.check(Action::Promote, Some(&dev)).is_ok());
        assert_eq!(
            deployer
                .check(Action::Promote, Some(&prod))
                .unwrap_err()
                .to_string(),
            "token `t` is limited to development; it may not act on production"
        );
        assert!(
            deployer.check(Action::Read, Some(&prod)).is_err(),
            "reads are scoped too"
        );
        assert!(deployer.check(Action::Approve, Some(&dev)).is_err());
        assert!(
            grant(Role::Approver, &[])
                .check(Action::Approve, Some(&prod))
                .is_ok()
        );
        assert!(
            grant(Role::Admin, &[])
                .check(Action::ManageTokens, None)
                .is_ok()
        );
        assert!(
            grant(Role::Admin, &["development"])
                .check(Action::ManageTokens, None)
                .is_err()
        );
        let scoped_approver = grant(Role::Approver, &["development"]);
        assert!(scoped_approver.check(Action::Freeze, Some(&dev)).is_ok());
        assert!(scoped_approver.check(Action::Freeze, None).is_err());
        assert!(scoped_approver.check(Action::Override, Some(&dev)).is_err());
        assert!(
            grant(Role::Admin, &[])
                .check(Action::Override, Some(&prod))
                .is_ok()
        );
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
    }

    #[test]
    fn a_prefix_scope_covers_the_environments_named_so_and_no_other() {
        let previews = grant(Role::Deployer, &["preview-*"]);
        let pr = EnvName::parse("preview-123").unwrap();
        let staging = EnvName::parse("staging").unwrap();
        assert!(previews.check(Action::OnDemand, Some(&pr)).is_ok());
        assert!(previews.check(Action::Promote, Some(&pr)).is_ok());
        assert_eq!(
            previews
                .check(Action::OnDemand, Some(&staging))
                .unwrap_err()
                .to_string(),
            "token `t` is limited to preview-*; it may not act on staging"
        );
        assert!(
            grant(Role::Viewer, &["preview-*"])
                .check(Action::OnDemand, Some(&pr))
                .is_err()
        );
        assert!(EnvScope::parse("*").is_err());
        assert!(EnvScope::parse("pre*view").is_err());
        assert_eq!(EnvScope::parse("staging").unwrap().env(), Some(staging));
    }

    #[test]
    fn a_person_with_several_roles_acts_with_the_one_that_holds_where_they_act() {
        let dev = EnvName::parse("development").unwrap();
        let prod = EnvName::parse("production").unwrap();
        let uat = EnvName::parse("uat").unwrap();
        let person = Grant {
            also: vec![Binding {
                role: Role::Approver,
                envs: vec![EnvScope::parse("production").unwrap()],
            }],
            ..grant(Role::Deployer, &["development"])
        };
        assert!(person.check(Action::Promote, Some(&dev)).is_ok());
        assert!(person.check(Action::Approve, Some(&prod)).is_ok());
        assert!(person.check(Action::Promote, Some(&prod)).is_err());
        assert!(person.check(Action::Approve, Some(&dev)).is_err());
        assert!(person.check(Action::Read, Some(&uat)).is_err());
        assert_eq!(
            person.acting(Action::Approve, Some(&prod)).role,
            Role::Approver
        );
        assert_eq!(person.in_env(&prod, &[Role::Admin]).role, Role::Approver);
        assert_eq!(person.in_env(&dev, &[Role::Approver]).role, Role::Deployer);
        assert_eq!(
            person.acting(Action::Promote, Some(&dev)).role,
            Role::Deployer
        );
        assert!(person.has_role(Role::Approver, Some(&prod)));
        assert!(!person.has_role(Role::Approver, Some(&dev)));
        assert!(person.sees(&prod) && person.sees(&dev) && !person.sees(&uat));
    }

    #[test]
    fn the_last_unscoped_admin_may_not_be_revoked() {
        let named = |name: &str, role, envs| Grant {
            name: name.into(),
            ..grant(role, envs)
        };
        let admin = named("admin", Role::Admin, &[]);
        let scoped = named("dev-admin", Role::Admin, &["development"]);
        let viewer = named("viewer", Role::Viewer, &[]);
        let alone = [admin.clone(), scoped.clone(), viewer.clone()];
        assert_eq!(
            may_revoke(&alone, "admin", "shipgate"),
            Err(RevokeRefusal::LastUnscopedAdmin("admin".into()))
        );
        assert_eq!(may_revoke(&alone, "dev-admin", "admin"), Ok(()));
        assert_eq!(may_revoke(&alone, "viewer", "admin"), Ok(()));
        let two = [admin, named("second", Role::Admin, &[]), scoped, viewer];
        assert_eq!(may_revoke(&two, "admin", "second"), Ok(()));
        assert_eq!(
            may_revoke(&two, "admin", "admin"),
            Err(RevokeRefusal::Itself("admin".into()))
        );
    }
}
