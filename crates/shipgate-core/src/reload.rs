//! What changes between the running config and a new one, said the way a reload reports it, and
//! which changes a reload cannot apply.

use crate::config::{Config, EnvironmentConfig};

/// The changes from `old` to `new`, one line each, in config order; empty when nothing changed.
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (o, n) = (&old.server, &new.server);
    if o.listen != n.listen {
        out.push(format!(
            "the API moves from {} to {} (the CLI follows the config)",
            o.listen, n.listen
        ));
    }
    let server_rest = |s: &crate::config::ServerConfig| {
        format!(
            "{:?}",
            (
                &s.max_artifact_size,
                &s.max_unpacked_size,
                s.max_files,
                s.drift_scan,
                s.isolation,
                s.data_plane,
                s.agent_listen,
                s.watch_config,
                s.retention,
            )
        )
    };
    if server_rest(o) != server_rest(n) {
        out.push("[server] settings changed".to_owned());
    }
    for app in &new.apps {
        match old.app(&app.name) {
            None => out.push(format!("app {} is new", app.name)),
            Some(before) if format!("{before:?}") != format!("{app:?}") => {
                let mut what = Vec::new();
                if before.run != app.run {
                    what.push("run");
                }
                if before.health != app.health || before.health_timeout != app.health_timeout {
                    what.push("health");
                }
                if before.limits != app.limits {
                    what.push("limits");
                }
                if what.is_empty() {
                    what.push("settings");
                }
                out.push(format!(
                    "app {}: {} changed; running instances keep the old, the next deploy uses the new",
                    app.name,
                    what.join(", ")
                ));
            }
            Some(_) => {}
        }
    }
    for app in &old.apps {
        if new.app(&app.name).is_none() {
            out.push(format!("app {} is gone from the config", app.name));
        }
    }
    for env in &new.environments {
        match old.environment(&env.name) {
            None => out.push(format!(
                "environment {} is new: its router listens on {}",
                env.name, env.listen
            )),
            Some(before) => out.extend(env_changes(before, env)),
        }
    }
    for env in &old.environments {
        if new.environment(&env.name).is_none() {
            out.push(format!(
                "environment {} is gone from the config: its router closes",
                env.name
            ));
        }
    }
    out
}

fn env_changes(old: &EnvironmentConfig, new: &EnvironmentConfig) -> Vec<String> {
    let name = &new.name;
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push(format!(
            "environment {name}: its router moves from {} to {}",
            old.listen, new.listen
        ));
    }
    if old.vars != new.vars {
        let mut keys: Vec<&String> = new
            .vars
            .keys()
            .chain(old.vars.keys())
            .filter(|k| old.vars.get(*k) != new.vars.get(*k))
            .collect();
        keys.sort();
        keys.dedup();
        let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        out.push(format!(
            "environment {name}: vars {} changed; they take effect at its next deploy",
            keys.join(", ")
        ));
    }
    let groups: [(&str, String, String); 6] = [
        (
            "verify",
            format!("{:?}", old.verify),
            format!("{:?}", new.verify),
        ),
        (
            "require",
            format!("{:?}", (&old.require, old.after.as_ref(), old.auto)),
            format!("{:?}", (&new.require, new.after.as_ref(), new.auto)),
        ),
        (
            "standby, drain or request_timeout",
            format!("{:?}", (old.standby, old.drain, old.request_timeout)),
            format!("{:?}", (new.standby, new.drain, new.request_timeout)),
        ),
        (
            "isolation or limits",
            format!("{:?}", (old.isolation, old.limits)),
            format!("{:?}", (new.isolation, new.limits)),
        ),
        (
            "hosts, rollout, hosts_required or front",
            format!(
                "{:?}",
                (&old.hosts, old.batch, old.hosts_required, old.front)
            ),
            format!(
                "{:?}",
                (&new.hosts, new.batch, new.hosts_required, new.front)
            ),
        ),
        (
            "mirrors, differs or secrets",
            format!("{:?}", (&old.mirrors, &old.differs, &old.secrets)),
            format!("{:?}", (&new.mirrors, &new.differs, &new.secrets)),
        ),
    ];
    for (what, before, after) in groups {
        if before != after {
            out.push(format!("environment {name}: {what} changed"));
        }
    }
    out
}

/// Why `new` cannot replace `old` without a full stop, if it cannot.
pub fn refused(old: &Config, new: &Config) -> Option<String> {
    if old.server.data_dir != new.server.data_dir || old.server.database != new.server.database {
        return Some(format!(
            "`data_dir` or `database` changed ({} → {}): a reload keeps the server's state where it is; stop the server, move the data dir, and start it again",
            old.server.data_dir.display(),
            new.server.data_dir.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(extra_env: &str) -> Config {
        let src = format!(
            "[apps.web]\nrun = \"x ${{PORT}}\"\n\n[environments.development]\nlisten = \"127.0.0.1:8101\"\n{extra_env}\n"
        );
        Config::parse(&src, Path::new("/tmp")).expect("valid")
    }

    #[test]
    fn a_reload_names_what_changed_in_config_order() {
        let old = parse("vars = { A = \"1\" }");
        assert!(changes(&old, &old).is_empty());
        let moved = Config::parse(
            "[apps.web]\nrun = \"x ${PORT}\"\n\n[environments.development]\nlisten = \"127.0.0.1:8201\"\nvars = { A = \"2\", B = \"3\" }\n\n[environments.testing]\nafter = \"development\"\nlisten = \"127.0.0.1:8102\"\n",
            Path::new("/tmp"),
        )
        .expect("valid");
        let said = changes(&old, &moved);
        assert_eq!(
            said,
            vec![
                "environment development: its router moves from 127.0.0.1:8101 to 127.0.0.1:8201",
                "environment development: vars A, B changed; they take effect at its next deploy",
                "environment testing is new: its router listens on 127.0.0.1:8102",
            ],
            "{said:?}"
        );
        let back = changes(&moved, &old);
        assert!(
            back.contains(
                &"environment testing is gone from the config: its router closes".to_owned()
            ),
            "{back:?}"
        );
        assert!(refused(&old, &moved).is_none());
    }
}
