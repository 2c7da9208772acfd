//! How each environment's instances are confined, decided once when the engine starts: in a
//! sandbox of the environment's own user with the limits of the config, or unisolated, and why.

use std::collections::HashMap;
use std::path::PathBuf;

use shipgate_core::config::{Isolation, Limits};
use shipgate_core::{AppName, Config, EnvName};
use shipgate_deploy::network::Reach;
use shipgate_deploy::{Hierarchy, Sandbox};

use crate::{Engine, EngineError};

/// What the engine can do for one environment.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Confinement {
    /// Its instances run in a sandbox; limits go through this cgroup hierarchy (if one exists).
    Sandboxed {
        /// `v1` or `v2`, or why no limit can be enforced.
        cgroups: Result<&'static str, String>,
        /// Whether its network is fenced (nftables), or why it cannot be.
        network: Result<(), String>,
    },
    /// Its instances run as the server's own child processes, for this reason.
    Unisolated(String),
}

/// Decides each environment's confinement. Refused when the config asks for something this
/// machine cannot give: `isolation = "sandbox"` where no sandbox can be made, or limits in a
/// sandboxed environment without a cgroup hierarchy to enforce them.
pub(crate) fn decide(
    config: &Config,
    cannot_sandbox: Option<String>,
    cgroups: Result<&'static str, String>,
    network: Result<(), String>,
) -> Result<HashMap<EnvName, Confinement>, EngineError> {
    let mut decided = HashMap::new();
    for env in &config.environments {
        let confinement = match (env.isolation, &cannot_sandbox) {
            (Isolation::None, _) => Confinement::Unisolated(
                "its isolation is \"none\": instances run as the server's own processes".into(),
            ),
            (Isolation::Auto, Some(why)) => Confinement::Unisolated(why.clone()),
            (Isolation::Sandbox, Some(why)) => {
                return Err(EngineError::CannotIsolate(format!(
                    "environment `{}` has isolation = \"sandbox\", but {why}; run the server as \
                     root with bubblewrap installed, or set isolation = \"auto\" or \"none\"",
                    env.name
                )));
            }
            (Isolation::Sandbox, None) if network.is_err() => {
                return Err(EngineError::CannotIsolate(format!(
                    "environment `{}` has isolation = \"sandbox\", but its network cannot be \
                     fenced: {}; install nftables, or set isolation = \"auto\"",
                    env.name,
                    network.clone().err().unwrap_or_default()
                )));
            }
            (_, None) => Confinement::Sandboxed {
                cgroups: cgroups.clone(),
                network: network.clone(),
            },
        };
        if let Confinement::Sandboxed {
            cgroups: Err(why), ..
        } = &confinement
            && let Some(app) = config
                .apps
                .iter()
                .find(|a| a.limits.overridden_by(env.limits).any())
        {
            return Err(EngineError::CannotIsolate(format!(
                "app `{}` in environment `{}` has limits, but {why}; enable the memory, cpu and \
                 pids controllers, or remove `limits`",
                app.name, env.name
            )));
        }
        decided.insert(env.name.clone(), confinement);
    }
    Ok(decided)
}

/// What the server says at start about environments it cannot isolate.
pub(crate) fn warnings(config: &Config, decided: &HashMap<EnvName, Confinement>) -> Vec<String> {
    config
        .environments
        .iter()
        .filter_map(|env| match decided.get(&env.name)? {
            Confinement::Unisolated(why) => {
                let mut said = format!(
                    "environment `{}` runs unisolated: {why}; its instances can read what the server's user can",
                    env.name
                );
                if config
                    .apps
                    .iter()
                    .any(|a| a.limits.overridden_by(env.limits).any())
                {
                    said.push_str(", and its `limits` are not enforced");
                }
                Some(said)
            }
            Confinement::Sandboxed {
                network: Err(why), ..
            } => Some(format!(
                "environment `{}` runs in a sandbox, but its network is not fenced: {why}; its processes can reach every port of this machine",
                env.name
            )),
            Confinement::Sandboxed { .. } => None,
        })
        .collect()
}

/// The cgroup hierarchy's version, or why there is none.
pub(crate) fn cgroups() -> Result<&'static str, String> {
    Hierarchy::detect().map(|h| h.version())
}

impl Engine {
    /// The sandbox instances of `app` in `env` run in, if that environment is sandboxed.
    pub(crate) fn sandbox_for(&self, app: &AppName, env: &EnvName) -> Option<Sandbox> {
        match self.confinement(env)? {
            Confinement::Unisolated(_) => None,
            Confinement::Sandboxed { network, .. } => Some(Sandbox {
                user: env_user(env),
                data_dir: self.app_data_dir(app, env),
                limits: self.limits_of(app, env).unwrap_or_default(),
                network: network.is_ok().then(|| self.reach_of(env)),
                on_demand: self
                    .config()
                    .environment(env)
                    .is_some_and(|e| e.template.is_some()),
            }),
        }
    }

    /// What the processes of `env` may reach (see [`shipgate_core::network`]).
    fn reach_of(&self, env: &EnvName) -> Reach {
        let config = self.config();
        let api = self.api_addr();
        let Some(env_config) = config.environment(env) else {
            return Reach::default();
        };
        let agents = config.server.agent_listen.port();
        Reach {
            local_ports: shipgate_core::network::local_ports(&config, env_config, api),
            egress: !env_config.network.closed,
            denied_ports: std::collections::BTreeSet::from_iter((agents != 0).then_some(agents)),
        }
    }

    /// How `env` is confined: as decided at start, or for an on-demand environment, as the
    /// environment its template copies.
    fn confinement(&self, env: &EnvName) -> Option<&Confinement> {
        if let Some(c) = self.isolation.get(env) {
            return Some(c);
        }
        let config = self.config();
        let template = config.environment(env)?.template.as_ref()?;
        self.isolation.get(&config.template(template)?.from)
    }

    /// The folder that `${DATA_DIR}` names for `app` in `env`: kept across releases.
    pub(crate) fn app_data_dir(&self, app: &AppName, env: &EnvName) -> PathBuf {
        self.config()
            .server
            .data_dir
            .join("data")
            .join(env.as_str())
            .join(app.as_str())
    }

    fn limits_of(&self, app: &AppName, env: &EnvName) -> Option<Limits> {
        let config = self.config();
        let app = config.app(app)?;
        let env = config.environment(env)?;
        Some(app.limits.overridden_by(env.limits))
    }

    /// How `app` in `env` is confined, as `status` shows it.
    pub(crate) fn isolation_view(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> shipgate_api::status::IsolationView {
        let limits = self.limits_of(app, env).unwrap_or_default();
        match self.confinement(env) {
            Some(Confinement::Sandboxed { cgroups, network }) => {
                shipgate_api::status::IsolationView {
                    sandboxed: true,
                    detail: format!(
                        "{}, {}",
                        match (limits_text(&limits), cgroups) {
                            (None, _) => format!("sandbox as user {}, no limits", env_user(env)),
                            (Some(l), Ok(version)) => {
                                format!("sandbox as user {}, {l} (cgroup {version})", env_user(env))
                            }
                            (Some(l), Err(_)) => format!("sandbox as user {}, {l}", env_user(env)),
                        },
                        match network {
                            Ok(()) => "network fenced",
                            Err(_) => "network not fenced",
                        }
                    ),
                }
            }
            Some(Confinement::Unisolated(why)) => shipgate_api::status::IsolationView {
                sandboxed: false,
                detail: format!("unisolated: {why}"),
            },
            None => shipgate_api::status::IsolationView {
                sandboxed: false,
                detail: "unisolated: the environment is not in the config".into(),
            },
        }
    }
}

/// The Unix user an environment's instances run as.
pub(crate) fn env_user(env: &EnvName) -> String {
    format!("sg-{env}")
}

/// `memory 512MiB, cpu 1.5, pids 512`, or None without limits.
fn limits_text(l: &Limits) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(m) = l.memory {
        parts.push(format!(
            "memory {}",
            shipgate_deploy::cgroup::bytes_text(m.0)
        ));
    }
    if let Some(c) = l.cpu {
        parts.push(format!("cpu {c}"));
    }
    if let Some(p) = l.pids {
        parts.push(format!("pids {p}"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let toml = format!(
            "[apps.web]\nrun = \"./web\"\nlimits = {{ memory = \"256MiB\" }}\n\
             [environments.staging]\nlisten = \"127.0.0.1:8101\"\n{extra}\n"
        );
        Config::parse(&toml, std::path::Path::new("/srv")).unwrap()
    }

    fn staging() -> EnvName {
        EnvName::parse("staging").unwrap()
    }

    #[test]
    fn auto_sandboxes_where_it_can_and_says_why_not_where_it_cannot() {
        let c = config("");
        let can = decide(&c, None, Ok("v1"), Ok(())).unwrap();
        assert_eq!(
            can[&staging()],
            Confinement::Sandboxed {
                cgroups: Ok("v1"),
                network: Ok(())
            }
        );
        assert!(warnings(&c, &can).is_empty());

        let cannot = decide(
            &c,
            Some("the server does not run as root".into()),
            Ok("v1"),
            Ok(()),
        )
        .unwrap();
        let said = warnings(&c, &cannot);
        assert_eq!(said.len(), 1);
        assert!(
            said[0].starts_with(
                "environment `staging` runs unisolated: the server does not run as root"
            ) && said[0].ends_with("and its `limits` are not enforced"),
            "{said:?}"
        );
    }

    #[test]
    fn sandbox_is_refused_at_start_where_none_can_be_made() {
        let c = config("isolation = \"sandbox\"");
        let e = decide(
            &c,
            Some("`bwrap` is not installed".into()),
            Ok("v2"),
            Ok(()),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "environment `staging` has isolation = \"sandbox\", but `bwrap` is not installed"
            ),
            "{e}"
        );
    }

    #[test]
    fn limits_without_cgroups_are_refused_in_a_sandbox() {
        let c = config("");
        let e = decide(&c, None, Err("no cgroup hierarchy".into()), Ok(())).unwrap_err();
        assert!(
            e.to_string()
                .contains("has limits, but no cgroup hierarchy"),
            "{e}"
        );
    }

    #[test]
    fn none_stays_unisolated_even_where_a_sandbox_could_be_made() {
        let c = config("isolation = \"none\"");
        let d = decide(&c, None, Ok("v1"), Ok(())).unwrap();
        assert!(matches!(d[&staging()], Confinement::Unisolated(_)));
    }

    #[test]
    fn the_environment_limits_win_over_the_app_ones() {
        let app = Limits {
            memory: Some(shipgate_core::ByteSize(256 << 20)),
            cpu: Some(1.0),
            pids: None,
        };
        let env = Limits {
            memory: Some(shipgate_core::ByteSize(512 << 20)),
            cpu: None,
            pids: Some(64),
        };
        assert_eq!(
            limits_text(&app.overridden_by(env)).unwrap(),
            "memory 512MiB, cpu 1, pids 64"
        );
    }
}
