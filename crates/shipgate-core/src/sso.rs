//! Single sign-on: `[server.oidc]`, the identity provider people sign in through, and how their
//! groups map to roles (`[server.oidc.roles]`, optionally per environment).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::access::Binding;
use crate::config::Problems;
use crate::{EnvScope, Role};

/// `[server.oidc]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its tokens carry it in `iss` (discovery is read
    /// from `ISSUER/.well-known/openid-configuration`).
    pub issuer: String,
    /// shipgate's client id at the provider (the `aud` of its ID tokens).
    pub client_id: String,
    /// The environment variable holding the client secret; None: a public client (PKCE only).
    pub client_secret_env: Option<String>,
    /// The scopes asked for, as written (nothing is added).
    pub scopes: Vec<String>,
    /// Where the person's groups are in the ID token: a claim name, or a dotted path into it
    /// (`realm_access.roles`).
    pub groups_claim: String,
    /// Group → role, in the order written.
    pub roles: Vec<GroupRole>,
}

/// One line of `[server.oidc.roles]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRole {
    /// The group as the provider names it.
    pub group: String,
    /// The role its members get, and where.
    pub binding: Binding,
    /// Where it is written in the config file.
    pub span: std::ops::Range<usize>,
}

impl OidcConfig {
    /// The roles of a person in `groups`, each once, in the order the config lists them.
    pub fn bindings(&self, groups: &[String]) -> Vec<Binding> {
        let mut out: Vec<Binding> = Vec::new();
        for line in &self.roles {
            if groups.contains(&line.group) && !out.contains(&line.binding) {
                out.push(line.binding.clone());
            }
        }
        out
    }

    /// The groups the config maps, for a refusal that says which ones would do.
    pub fn mapped_groups(&self) -> Vec<&str> {
        self.roles.iter().map(|r| r.group.as_str()).collect()
    }
}

/// `[server.oidc]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    issuer: Spanned<String>,
    client_id: Spanned<String>,
    client_secret_env: Option<Spanned<String>>,
    scopes: Option<Spanned<Vec<String>>>,
    groups_claim: Option<Spanned<String>>,
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

/// Checks `[server.oidc]`; each problem is reported at its position.
pub(crate) fn oidc(raw: &Spanned<RawOidc>, problems: &mut Problems) -> Option<OidcConfig> {
    let r = raw.get_ref();
    let issuer = problems.parse(&r.issuer, |s| {
        let s = s.trim_end_matches('/');
        let host = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .filter(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        match host {
            None => Err(format!(
                "`issuer = \"{s}\"` is not a URL: write the provider's issuer, as its tokens carry it in `iss` (\"https://id.example.com/realms/eng\")"
            )),
            Some(rest) if s.starts_with("http://") && !is_loopback(rest) => Err(format!(
                "`issuer = \"{s}\"` is plain http off this machine: tokens and codes would cross the network in clear; use the provider's https:// address"
            )),
            Some(_) => Ok(s.to_owned()),
        }
    });
    let client_id = r.client_id.get_ref().trim().to_owned();
    if client_id.is_empty() {
        problems.add(
            r.client_id.span(),
            "`client_id` is empty",
            "write shipgate's client id at the provider, for example client_id = \"shipgate\""
                .to_owned(),
        );
    }
    let client_secret_env = r.client_secret_env.as_ref().and_then(|e| {
        problems.parse(e, |s| {
            if crate::config::is_variable_name(s) {
                Ok(s.to_owned())
            } else {
                Err(format!(
                    "`client_secret_env = \"{s}\"` names no environment variable: write the variable's name (SHIPGATE_OIDC_SECRET), never the secret"
                ))
            }
        })
    });
    let scopes = match &r.scopes {
        Some(s) if !s.get_ref().iter().any(|x| x == "openid") => {
            problems.add(
                s.span(),
                "`scopes` lacks \"openid\", without which the provider gives no ID token",
                "write scopes = [\"openid\", \"email\", \"profile\"] and whatever your provider needs for groups".to_owned(),
            );
            Vec::new()
        }
        Some(s) => s.get_ref().clone(),
        None => ["openid", "email", "profile"].map(str::to_owned).to_vec(),
    };
    let groups_claim = match &r.groups_claim {
        Some(c) if c.get_ref().trim().is_empty() || c.get_ref().split('.').any(str::is_empty) => {
            problems.add(
                c.span(),
                format!("`groups_claim = \"{}\"` is no claim", c.get_ref()),
                "write the claim that lists a person's groups, or a dotted path into it: \"groups\", \"realm_access.roles\"".to_owned(),
            );
            String::new()
        }
        Some(c) => c.get_ref().clone(),
        None => "groups".to_owned(),
    };
    let mut roles = Vec::new();
    for (group, value) in &r.roles {
        if let Some(binding) = group_role(group.get_ref(), value, problems) {
            roles.push(GroupRole {
                group: group.get_ref().clone(),
                binding,
                span: value.span(),
            });
        }
    }
    if r.roles.is_empty() {
        problems.add(
            raw.span(),
            "`[server.oidc]` maps no group to a role, so nobody could sign in",
            "add `[server.oidc.roles]` with lines such as \"platform\" = \"admin\" or \"developers\" = { role = \"deployer\", envs = [\"development\"] }".to_owned(),
        );
    }
    Some(OidcConfig {
        issuer: issuer?,
        client_id,
        client_secret_env,
        scopes,
        groups_claim,
        roles,
    })
}

/// Refuses a role mapped to an environment the config does not have (a prefix, `preview-*`,
/// may name on-demand environments still to come).
pub(crate) fn check_role_envs(
    oidc: &OidcConfig,
    envs: &[crate::config::EnvironmentConfig],
    problems: &mut Problems,
) {
    for line in &oidc.roles {
        for scope in &line.binding.envs {
            if let Some(env) = scope.env()
                && !envs.iter().any(|e| e.name == env)
            {
                problems.add(
                    line.span.clone(),
                    format!(
                        "group `{}` is given the role {} in `{env}`, which the config does not have",
                        line.group, line.binding.role
                    ),
                    "name one of the config's environments, or a prefix with `*` for on-demand ones (\"preview-*\")".to_owned(),
                );
            }
        }
    }
}

/// `"group" = "role"` or `"group" = { role = "...", envs = [...] }`.
fn group_role(
    group: &str,
    value: &Spanned<toml::Value>,
    problems: &mut Problems,
) -> Option<Binding> {
    let help = "write \"GROUP\" = \"ROLE\" or \"GROUP\" = { role = \"ROLE\", envs = [\"ENV\", \"PREFIX-*\"] }, with a role of viewer, deployer, approver, tester or admin";
    let written = match value.get_ref() {
        toml::Value::String(role) => Some((role.as_str(), Vec::new())),
        toml::Value::Table(t) if t.keys().all(|k| k == "role" || k == "envs") => {
            let envs = match t.get("envs") {
                None => Some(Vec::new()),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|e| e.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>(),
                Some(_) => None,
            };
            t.get("role").and_then(|r| r.as_str()).zip(envs)
        }
        _ => None,
    };
    let Some((role, envs)) = written else {
        problems.add(
            value.span(),
            format!("the role of group `{group}` is not written right"),
            help.to_owned(),
        );
        return None;
    };
    let role = match Role::parse(role) {
        Ok(r) => r,
        Err(e) => {
            problems.add(value.span(), format!("group `{group}`: {e}"), None);
            return None;
        }
    };
    let mut scopes = Vec::new();
    for e in envs {
        match EnvScope::parse(&e) {
            Ok(s) => scopes.push(s),
            Err(err) => {
                problems.add(value.span(), format!("group `{group}`: {}", err.0), None);
                return None;
            }
        }
    }
    Some(Binding { role, envs: scopes })
}

/// Whether a URL's host part (after the scheme) is this machine.
fn is_loopback(rest: &str) -> bool {
    let host = rest.split('/').next().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or_else(
            || host.rsplit_once(':').map_or(host, |(h, _)| h),
            |(h, _)| h,
        );
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str = "[apps.web]\nrun = \"./web\"\n[environments.development]\nlisten = \"127.0.0.1:8101\"\n[environments.production]\nafter = \"development\"\nlisten = \"127.0.0.1:8104\"\n";

    fn parse(oidc: &str) -> Result<Config, String> {
        let src = format!("[server.oidc]\n{oidc}\n{BASE}");
        Config::parse(&src, Path::new("/tmp")).map_err(|e| e.render("shipgate.toml", &src))
    }

    #[test]
    fn groups_map_to_roles_in_their_environments() {
        let config = parse(
            "issuer = \"https://id.example.com/realms/eng/\"\nclient_id = \"shipgate\"\nclient_secret_env = \"SHIPGATE_OIDC_SECRET\"\ngroups_claim = \"realm_access.roles\"\n[server.oidc.roles]\n\"platform\" = \"admin\"\n\"release-managers\" = { role = \"approver\", envs = [\"production\"] }\n\"developers\" = { role = \"deployer\", envs = [\"development\", \"preview-*\"] }\n",
        )
        .unwrap();
        let oidc = config.server.oidc.unwrap();
        assert_eq!(oidc.issuer, "https://id.example.com/realms/eng");
        assert_eq!(oidc.scopes, ["openid", "email", "profile"]);
        assert_eq!(oidc.groups_claim, "realm_access.roles");
        let roles = |groups: &[&str]| -> Vec<String> {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            oidc.bindings(&groups)
                .iter()
                .map(|b| {
                    let envs: Vec<&str> = b.envs.iter().map(|e| e.as_str()).collect();
                    format!("{} {}", b.role, envs.join(","))
                })
                .collect()
        };
        assert_eq!(
            roles(&["developers", "release-managers", "other"]),
            ["deployer development,preview-*", "approver production"]
        );
        assert!(roles(&["other"]).is_empty());
    }

    #[test]
    fn a_provider_config_that_could_not_work_is_refused_where_it_is_written() {
        let refused = |oidc: &str, says: &str| {
            let err = parse(oidc).unwrap_err();
            assert!(err.contains(says), "{err}");
        };
        let roles = "[server.oidc.roles]\n\"platform\" = \"admin\"\n";
        refused(
            &format!("issuer = \"http://id.example.com\"\nclient_id = \"s\"\n{roles}"),
            "plain http off this machine",
        );
        assert!(
            parse(&format!(
                "issuer = \"http://127.0.0.1:9000\"\nclient_id = \"s\"\n{roles}"
            ))
            .is_ok()
        );
        refused(
            &format!("issuer = \"https://id\"\nclient_id = \"s\"\nscopes = [\"email\"]\n{roles}"),
            "lacks \"openid\"",
        );
        refused(
            &format!(
                "issuer = \"https://id\"\nclient_id = \"s\"\nclient_secret_env = \"s3cr3t value\"\n{roles}"
            ),
            "names no environment variable",
        );
        refused(
            "issuer = \"https://id\"\nclient_id = \"s\"\n",
            "maps no group to a role",
        );
        refused(
            "issuer = \"https://id\"\nclient_id = \"s\"\n[server.oidc.roles]\n\"qa\" = \"boss\"\n",
            "is not a role",
        );
        refused(
            "issuer = \"https://id\"\nclient_id = \"s\"\n[server.oidc.roles]\n\"qa\" = { role = \"tester\", env = [\"uat\"] }\n",
            "the role of group `qa` is not written right",
        );
        refused(
            "issuer = \"https://id\"\nclient_id = \"s\"\n[server.oidc.roles]\n\"qa\" = { role = \"tester\", envs = [\"prodution\"] }\n",
            "in `prodution`, which the config does not have",
        );
        assert!(
            parse("issuer = \"https://id\"\nclient_id = \"s\"\n[server.oidc.roles]\n\"qa\" = { role = \"tester\", envs = [\"pr-*\", \"production\"] }\n").is_ok()
        );
        refused(
            &format!("issuer = \"https://id\"\nclient_id = \"s\"\nclaims = 1\n{roles}"),
            "unknown key `claims`",
        );
    }
}
