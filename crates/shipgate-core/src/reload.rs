//! What changes between the running config and a new one, said the way a reload reports it, and
//! which changes a reload cannot apply.

use crate::config::Config;
use toml::{Table, Value};

/// The changes from `old` to `new`, one line each, in config order; empty when nothing changed.
///
/// Whether anything changed is decided on the whole of both configs: every parsed field and
/// every key as written. The lines come from comparing every key, so no key can be missed: a
/// value is shown unless it may hold a secret (`vars`, URLs, secrets, data locations).
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    if format!("{old:?}") == format!("{new:?}") && old.written == new.written {
        return Vec::new();
    }
    let mut out = Vec::new();
    compare_tables(&mut Vec::new(), &old.written.0, &new.written.0, &mut out);
    if out.is_empty() {
        out.push(
            "the file is written the same, but what it means changed (a path it names, or a variable it reads): the new meaning applies"
                .to_owned(),
        );
    }
    out
}

/// Lines for every key that differs between two tables (`path` leads to them).
fn compare_tables(path: &mut Vec<String>, old: &Table, new: &Table, out: &mut Vec<String>) {
    for (key, after) in new {
        path.push(key.clone());
        match (old.get(key), after) {
            // A new section is said as one; a new table in one, key by key (`vars.A is set`).
            (None, Value::Table(t)) if path.len() != 2 => {
                compare_tables(path, &Table::new(), t, out)
            }
            (None, _) => out.push(added(path, after)),
            (Some(before), _) => compare_values(path, before, after, out),
        }
        path.pop();
    }
    for (key, before) in old {
        if !new.contains_key(key) {
            path.push(key.clone());
            match before {
                Value::Table(t) if path.len() != 2 => compare_tables(path, t, &Table::new(), out),
                _ => out.push(removed(path, before)),
            }
            path.pop();
        }
    }
}

fn compare_values(path: &mut Vec<String>, before: &Value, after: &Value, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Table(b), Value::Table(a)) => compare_tables(path, b, a, out),
        (b, a) if b == a => {}
        (b, a) => out.push(match (shown(path, b), shown(path, a)) {
            (Some(b), Some(a)) => format!("{} changed: {b} → {a}{}", key(path), effect(path)),
            _ => format!("{} changed{}", key(path), effect(path)),
        }),
    }
}

fn added(path: &[String], value: &Value) -> String {
    match (path, value) {
        ([family, name], Value::Table(t)) if family == "environments" => format!(
            "environment {name} is new{}",
            t.get("listen")
                .and_then(Value::as_str)
                .map(|l| format!(": its router listens on {l}"))
                .unwrap_or_default()
        ),
        ([family, name], _) if family == "apps" => format!("app {name} is new"),
        (_, Value::Table(_)) => format!("{} is new{}", key(path), effect(path)),
        _ => match shown(path, value) {
            Some(v) => format!("{} is set: {v}{}", key(path), effect(path)),
            None => format!("{} is set{}", key(path), effect(path)),
        },
    }
}

fn removed(path: &[String], value: &Value) -> String {
    match path {
        [family, name] if family == "environments" => {
            format!("environment {name} is gone from the config: its router closes")
        }
        [family, name] if family == "apps" => format!("app {name} is gone from the config"),
        _ => match shown(path, value) {
            Some(v) => format!(
                "{} is no longer set (was {v}): its default applies{}",
                key(path),
                effect(path)
            ),
            None => format!(
                "{} is no longer set: its default applies{}",
                key(path),
                effect(path)
            ),
        },
    }
}

/// The key as the file would write it in one line: `environments.production.chaos.allow`.
fn key(path: &[String]) -> String {
    let part = |p: &String| {
        if !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            p.clone()
        } else {
            format!("{p:?}")
        }
    };
    path.iter().map(part).collect::<Vec<_>>().join(".")
}

/// When a change takes effect, where that is not at once.
fn effect(path: &[String]) -> &'static str {
    match path {
        [family, _, what, ..] if family == "apps" && what != "flags" => {
            "; running instances keep the old, the next deploy uses the new"
        }
        [family, _, what, ..]
            if family == "environments" && (what == "vars" || what == "limits") =>
        {
            "; it takes effect at the environment's next deploy"
        }
        _ => "",
    }
}

/// The value as TOML, unless it may hold a secret or runs long.
fn shown(path: &[String], value: &Value) -> Option<String> {
    let secret = path.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        [
            "vars", "secret", "url", "database", "data", "password", "token",
        ]
        .iter()
        .any(|s| p == *s || p.ends_with(&format!("_{s}")))
    });
    let text = match value {
        Value::Table(_) => return None,
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    (!secret && text.chars().count() <= 80).then_some(text)
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
                "environments.development.listen changed: \"127.0.0.1:8101\" → \"127.0.0.1:8201\"",
                "environments.development.vars.A changed; it takes effect at the environment's next deploy",
                "environments.development.vars.B is set; it takes effect at the environment's next deploy",
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
        let same_meaning = parse("vars = { A = \"1\" }\nstandby = \"600s\"");
        let other_words = parse("vars = { A = \"1\" }\nstandby = \"10m\"");
        assert_eq!(
            changes(&same_meaning, &other_words),
            vec!["environments.development.standby changed: \"600s\" → \"10m\""]
        );
    }

    /// Every key of `value` under `path` that holds no table, with its value.
    fn leaves(path: &mut Vec<String>, value: &Value, out: &mut Vec<(Vec<String>, Value)>) {
        match value {
            Value::Table(t) => {
                for (k, v) in t {
                    path.push(k.clone());
                    leaves(path, v, out);
                    path.pop();
                }
            }
            other => out.push((path.clone(), other.clone())),
        }
    }

    /// Every key of `config`'s file that holds no table, with its value.
    fn keys_of(config: &Config) -> Vec<(Vec<String>, Value)> {
        let mut keys = Vec::new();
        leaves(
            &mut Vec::new(),
            &Value::Table(config.written.0.clone()),
            &mut keys,
        );
        keys
    }

    /// Values to try in place of `value`, the likeliest valid first.
    fn other_values(value: &Value) -> Vec<Value> {
        const WORDS: &[&str] = &[
            "sandbox",
            "none",
            "server",
            "keep",
            "hash",
            "admin",
            "pass",
            "creation",
            "slack",
            "cloudevents",
            "development",
            "production",
            "staging",
            "api",
            "h3",
            "promotion.failed",
            "viewer",
        ];
        match value {
            Value::Boolean(b) => vec![Value::Boolean(!b)],
            Value::Integer(i) => [i + 1, i - 1, i * 2].map(Value::Integer).to_vec(),
            Value::Float(f) => [f / 2.0, f * 2.0, (f + 1.0) / 2.0]
                .map(Value::Float)
                .to_vec(),
            Value::String(s) => {
                let mut tries = Vec::new();
                if let Some(end) = s.rfind(|c: char| c.is_ascii_digit()) {
                    let start = s[..=end]
                        .rfind(|c: char| !c.is_ascii_digit())
                        .map_or(0, |i| i + 1);
                    let n: u64 = s[start..=end].parse().expect("digits");
                    let width = end + 1 - start;
                    for m in [n + 1, n + 100] {
                        tries.push(format!("{}{m:0width$}{}", &s[..start], &s[end + 1..]));
                    }
                }
                tries.extend([format!("{s}x"), format!("{s}/x")]);
                tries.extend(WORDS.iter().map(|w| (*w).to_owned()));
                tries.into_iter().map(Value::String).collect()
            }
            Value::Array(items) => {
                let mut tries = Vec::new();
                if let Some((_, rest)) = items.split_last() {
                    tries.push(Value::Array(rest.to_vec()));
                }
                if let Some((first, rest)) = items.split_first() {
                    for other in other_values(first) {
                        let mut changed = vec![other];
                        changed.extend(rest.iter().cloned());
                        tries.push(Value::Array(changed));
                    }
                }
                tries
            }
            _ => Vec::new(),
        }
    }

    /// `table` with the key at `path` set to `value`, or removed (None).
    fn with(table: &Table, path: &[String], value: Option<Value>) -> Table {
        let mut out = table.clone();
        let mut at = &mut out;
        for k in &path[..path.len() - 1] {
            at = at
                .get_mut(k)
                .and_then(Value::as_table_mut)
                .expect("a table");
        }
        let key = path[path.len() - 1].clone();
        match value {
            Some(v) => at.insert(key, v),
            None => at.remove(&key),
        };
        out
    }

    fn reference() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("experiments")).expect("folder");
        for f in ["db-latency.json", "db-latency.jsonx", "db-latency.json/x"] {
            let _ = std::fs::write(dir.path().join("experiments").join(f), "{}");
        }
        for f in ["secrets.development.age", "secrets.development.agex"] {
            std::fs::write(dir.path().join(f), "").expect("file");
        }
        let src = include_str!("../../../docs/shipgate.reference.toml");
        let config = Config::parse(src, dir.path()).unwrap_or_else(|e| {
            panic!(
                "the reference config is invalid:\n{}",
                e.render("reference", src)
            )
        });
        (dir, config)
    }

    /// Keys a valid config cannot change alone: another key must change with them.
    /// (`masked = false` is refused: a template's data is always masked. A hotfix lane's
    /// `from` must be on the way into its environment, so production's `after` and the lane's
    /// `from` (staging, the only environment before it) change together. `require.signoff`
    /// names an environment with a sign-off, and staging is the only one.)
    const CHANGED_ONLY_WITH_OTHERS: &[&str] = &[
        "apps.web.flags.new-checkout.type",
        "environments.production.after",
        "environments.production.hotfix.from",
        "environments.production.require.signoff",
        "templates.preview.data.masked",
    ];

    #[test]
    fn a_reload_names_a_change_of_any_key_of_the_reference_config() {
        let (dir, config) = reference();
        let keys = keys_of(&config);
        assert!(keys.len() > 100, "{} keys", keys.len());
        let mut unchangeable = Vec::new();
        for (path, value) in &keys {
            let name = key(path);
            let changed = other_values(value)
                .into_iter()
                .filter(|o| o != value)
                .find_map(|other| {
                    let text =
                        toml::to_string(&with(&config.written.0, path, Some(other))).expect("toml");
                    Config::parse(&text, dir.path()).ok()
                });
            let Some(changed) = changed else {
                unchangeable.push(name);
                continue;
            };
            let said = changes(&config, &changed);
            assert!(
                said.iter().any(|l| l.starts_with(&name)),
                "a change of `{name}` is not named: {said:?}"
            );
            assert!(
                refused(&config, &changed).is_none() || name.starts_with("server.data"),
                "{name}"
            );
            let removed = with(&config.written.0, path, None);
            if let Ok(without) =
                Config::parse(&toml::to_string(&removed).expect("toml"), dir.path())
            {
                let said = changes(&config, &without);
                assert!(
                    said.iter().any(|l| l.starts_with(&name)),
                    "removing `{name}` is not named: {said:?}"
                );
            }
        }
        assert_eq!(
            unchangeable, CHANGED_ONLY_WITH_OTHERS,
            "no valid config differs from the reference in only these keys: add a value to try in `other_values`"
        );
    }

    #[test]
    fn the_reference_config_sets_every_key_of_the_config_reference() {
        let (_dir, config) = reference();
        let keys = keys_of(&config);
        let written: Vec<Vec<String>> = keys.into_iter().map(|(p, _)| p).collect();
        let doc = include_str!("../../../docs/config.md");
        let placeholders = ["NAME", "KEY", "ENV", "DEP", "TABLE", "COLUMN", "HOST"];
        let mut missing = Vec::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let cell = line.split('|').nth(1).unwrap_or_default();
            for documented in cell.split('`').skip(1).step_by(2) {
                let documented = documented.trim_start_matches('.');
                if documented.contains(' ')
                    || !documented.contains('.') && !documented.contains("NAME")
                {
                    continue;
                }
                let parts: Vec<&str> = documented.split('.').collect();
                let known = written.iter().any(|w| {
                    w.len() >= parts.len()
                        && parts
                            .iter()
                            .zip(w)
                            .all(|(d, k)| placeholders.contains(d) || d == k)
                });
                if !known {
                    missing.push(documented.to_owned());
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/config.md documents keys docs/shipgate.reference.toml does not set: {missing:?}"
        );
    }
}
