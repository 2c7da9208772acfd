//! The `shipgate.toml` model: parsed with spans, validated as a whole, and every problem
//! reported at the `line:column` where it was written, with what to do about it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::{AppName, ByteSize, Duration, EnvName};

/// A validated config. Holding one proves every rule of this module holds.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[apps.*]`, in file order.
    pub apps: Vec<AppConfig>,
    /// `[environments.*]`, each after the one it names in `after` (file order otherwise).
    pub environments: Vec<EnvironmentConfig>,
}

/// `[server]`: where the API listens and where state is kept.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the API and dashboard.
    pub listen: SocketAddr,
    /// Database, artifacts, logs and the admin token live here (absolute, resolved against the
    /// config file's folder).
    pub data_dir: PathBuf,
    /// The SQLite database file (default `data_dir/shipgate.db`; `database = "sqlite://PATH"`).
    pub database: PathBuf,
    /// Largest artifact upload accepted.
    pub max_artifact_size: ByteSize,
}

/// `[apps.NAME]`: one deployable service.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app's name.
    pub name: AppName,
    /// Shell command started inside the unpacked release directory.
    pub run: String,
    /// HTTP path that answers 2xx once an instance is ready.
    pub health: String,
    /// How long an instance may take to become healthy.
    pub health_timeout: Duration,
    /// When a live instance counts as crash-looping.
    pub crash_loop: CrashLoop,
}

/// `crash_loop = { crashes = 5, within = "1m" }`: more than `crashes` crashes within `within`
/// and the instance is no longer restarted; its environment is marked unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    /// Crashes tolerated within the window.
    pub crashes: u32,
    /// The window.
    pub within: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        Self {
            crashes: 5,
            within: Duration::from_std(std::time::Duration::from_secs(60)),
        }
    }
}

/// `[environments.NAME]`: one place a release runs.
#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    /// The environment's name.
    pub name: EnvName,
    /// The environment a release must be verified in before it may enter this one.
    pub after: Option<EnvName>,
    /// Stable address served by the router.
    pub listen: SocketAddr,
    /// Environment variables of every instance here.
    pub vars: BTreeMap<String, String>,
    /// What a release must pass after the switch.
    pub verify: VerifyConfig,
    /// How long the replaced release keeps running after a switch, so a rollback is instant.
    pub standby: Duration,
    /// How long requests in flight on a replaced or stopped instance may take to finish.
    pub drain: Duration,
    /// Longest wait for an instance's response head before the router answers 504.
    pub request_timeout: Option<Duration>,
}

impl EnvironmentConfig {
    /// Default `standby`.
    pub const DEFAULT_STANDBY: std::time::Duration = std::time::Duration::from_secs(600);
    /// Default `drain`.
    pub const DEFAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);
}

/// `verify.*` of an environment.
#[derive(Debug, Clone, Default)]
pub struct VerifyConfig {
    /// Commands that must exit 0 against the freshly switched environment.
    pub tests: Vec<String>,
    /// How long one test command may run.
    pub timeout: Option<Duration>,
}

impl VerifyConfig {
    /// The default limit of one test command.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
}

/// One problem in a config file, located by byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where in the file (bytes).
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

/// Every problem found in a config file; the config is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in the config", problems.len())]
pub struct ConfigError {
    /// The problems, in file order.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// Plain-text report: `file:line:column: message` and a `help:` line per problem.
    pub fn render(&self, file: &str, src: &str) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let (line, col) = line_col(src, p.span.start);
            out.push_str(&format!("{file}:{line}:{col}: {}\n", p.message));
            if let Some(help) = &p.help {
                out.push_str(&format!("  help: {help}\n"));
            }
        }
        out
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Default API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    apps: BTreeMap<Spanned<String>, RawApp>,
    #[serde(default)]
    environments: BTreeMap<Spanned<String>, RawEnvironment>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    data_dir: Option<String>,
    database: Option<Spanned<String>>,
    max_artifact_size: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    run: Spanned<String>,
    health: Option<Spanned<String>>,
    health_timeout: Option<Spanned<String>>,
    crash_loop: Option<RawCrashLoop>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrashLoop {
    crashes: Spanned<u32>,
    within: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    after: Option<Spanned<String>>,
    listen: Spanned<String>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    verify: RawVerify,
    require: Option<Spanned<toml::Table>>,
    standby: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    #[serde(default)]
    tests: Vec<String>,
    timeout: Option<Spanned<String>>,
    watch: Option<Spanned<toml::Value>>,
    max_error_rate: Option<Spanned<toml::Value>>,
}

/// Collects problems while a raw config is turned into a [`Config`].
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) {
        self.0.push(ConfigProblem {
            span,
            message: message.into(),
            help: help.into(),
        });
    }

    fn parse<T>(
        &mut self,
        value: &Spanned<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        parse(value.get_ref())
            .map_err(|e| self.add(value.span(), e, None))
            .ok()
    }
}

impl Config {
    /// Parses and validates a config file's text. Relative paths are resolved against
    /// `base_dir` (the folder of the file).
    pub fn parse(src: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| ConfigError {
            problems: vec![toml_problem(&e, src)],
        })?;
        let mut problems = Problems::default();
        let server = server(raw.server, base_dir, &mut problems);
        let apps = apps(raw.apps, &mut problems);
        let environments = environments(raw.environments, &server, &mut problems);
        if apps.is_empty() {
            problems.add(0..0, "the config defines no app", "add one, for example:\n[apps.web]\nrun = \"./web --port ${PORT}\"\nhealth = \"/healthz\"".to_owned());
        }
        if environments.is_empty() && problems.0.is_empty() {
            problems.add(
                0..0,
                "the config defines no environment",
                "add one, for example:\n[environments.development]\nlisten = \"127.0.0.1:8101\""
                    .to_owned(),
            );
        }
        if !problems.0.is_empty() {
            problems.0.sort_by_key(|p| p.span.start);
            return Err(ConfigError {
                problems: problems.0,
            });
        }
        Ok(Config {
            server,
            apps,
            environments,
        })
    }

    /// The app of that name.
    pub fn app(&self, name: &AppName) -> Option<&AppConfig> {
        self.apps.iter().find(|a| &a.name == name)
    }

    /// The environment of that name.
    pub fn environment(&self, name: &EnvName) -> Option<&EnvironmentConfig> {
        self.environments.iter().find(|e| &e.name == name)
    }
}

fn server(raw: RawServer, base_dir: &Path, problems: &mut Problems) -> ServerConfig {
    let listen = match &raw.listen {
        Some(l) => problems.parse(l, parse_address),
        None => parse_address(DEFAULT_LISTEN).ok(),
    };
    let data_dir = base_dir.join(raw.data_dir.as_deref().unwrap_or(".shipgate"));
    let database = match &raw.database {
        None => data_dir.join("shipgate.db"),
        Some(db) => match db
            .get_ref()
            .strip_prefix("sqlite://")
            .or_else(|| db.get_ref().strip_prefix("sqlite:"))
        {
            Some(path) if !path.is_empty() => base_dir.join(path),
            _ => {
                problems.add(
                    db.span(),
                    format!("database `{}` is not supported by this version", db.get_ref()),
                    "write \"sqlite://PATH\", or remove `database` to use shipgate.db in data_dir (PostgreSQL support comes later)".to_owned(),
                );
                data_dir.join("shipgate.db")
            }
        },
    };
    let max_artifact_size = match &raw.max_artifact_size {
        Some(s) => problems.parse(s, ByteSize::parse),
        None => None,
    };
    ServerConfig {
        listen: listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7300))),
        data_dir,
        database,
        max_artifact_size: max_artifact_size.unwrap_or(ByteSize(512 << 20)),
    }
}

fn apps(raw: BTreeMap<Spanned<String>, RawApp>, problems: &mut Problems) -> Vec<AppConfig> {
    let mut raw: Vec<_> = raw.into_iter().collect();
    raw.sort_by_key(|(name, _)| name.span().start);
    let mut apps = Vec::new();
    for (name, app) in raw {
        let parsed_name = problems.parse(&name, |s| AppName::parse(s).map_err(|e| e.0));
        let health = app
            .health
            .map(Spanned::into_inner)
            .unwrap_or_else(|| "/".to_owned());
        if !health.starts_with('/') {
            problems.add(
                name.span(),
                format!(
                    "health path `{health}` of app `{}` must start with `/`",
                    name.get_ref()
                ),
                None,
            );
        }
        if app.run.get_ref().trim().is_empty() {
            problems.add(
                app.run.span(),
                format!("`run` of app `{}` is empty", name.get_ref()),
                "give the command that starts the app, for example \"./web --port ${PORT}\""
                    .to_owned(),
            );
        }
        let health_timeout = match &app.health_timeout {
            Some(t) => problems.parse(t, Duration::parse),
            None => None,
        };
        let crash_loop = match &app.crash_loop {
            Some(c) => CrashLoop {
                crashes: *c.crashes.get_ref(),
                within: problems
                    .parse(&c.within, Duration::parse)
                    .unwrap_or(CrashLoop::default().within),
            },
            None => CrashLoop::default(),
        };
        if let Some(name) = parsed_name {
            apps.push(AppConfig {
                name,
                run: app.run.into_inner(),
                crash_loop,
                health,
                health_timeout: health_timeout
                    .unwrap_or(Duration::from_std(std::time::Duration::from_secs(30))),
            });
        }
    }
    apps
}

fn environments(
    raw: BTreeMap<Spanned<String>, RawEnvironment>,
    server: &ServerConfig,
    problems: &mut Problems,
) -> Vec<EnvironmentConfig> {
    let mut raw: Vec<_> = raw.into_iter().collect();
    raw.sort_by_key(|(name, _)| name.span().start);
    let names: Vec<String> = raw.iter().map(|(n, _)| n.get_ref().clone()).collect();
    let mut envs = Vec::new();
    let mut addresses: Vec<(SocketAddr, String)> =
        vec![(server.listen, "the server (`[server] listen`)".to_owned())];
    for (name, env) in &raw {
        let parsed_name = problems.parse(name, |s| EnvName::parse(s).map_err(|e| e.0));
        let after = env.after.as_ref().and_then(|after| {
            if after.get_ref() == name.get_ref() {
                problems.add(
                    after.span(),
                    format!("environment `{}` comes after itself", name.get_ref()),
                    "name the environment a release must pass first, or remove `after`".to_owned(),
                );
                return None;
            }
            if !names.contains(after.get_ref()) {
                let help = match closest(after.get_ref(), names.iter().map(String::as_str)) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!(
                        "define [environments.{}] or name one of: {}",
                        after.get_ref(),
                        names.join(", ")
                    ),
                };
                problems.add(
                    after.span(),
                    format!("`after = \"{}\"` names no environment", after.get_ref()),
                    help,
                );
                return None;
            }
            problems.parse(after, |s| EnvName::parse(s).map_err(|e| e.0))
        });
        let listen = problems.parse(&env.listen, parse_address);
        if let Some(addr) = listen {
            if let Some((_, owner)) = addresses.iter().find(|(a, _)| same_socket(*a, addr)) {
                problems.add(
                    env.listen.span(),
                    format!(
                        "environment `{}` listens on {addr}, which {owner} already uses",
                        name.get_ref()
                    ),
                    "give every environment its own address".to_owned(),
                );
            }
            addresses.push((addr, format!("environment `{}`", name.get_ref())));
        }
        if let Some(require) = &env.require {
            problems.add(
                require.span(),
                format!("`require` of environment `{}` is not enforced by this version of shipgate", name.get_ref()),
                "remove it rather than rely on it: approvals, soak time and deploy windows arrive with the gates release".to_owned(),
            );
        }
        for key in [&env.verify.watch, &env.verify.max_error_rate]
            .into_iter()
            .flatten()
        {
            problems.add(key.span(), "`verify.watch` and `verify.max_error_rate` are not enforced by this version of shipgate", "remove them; use `verify.tests` to check a release after the switch".to_owned());
        }
        let timeout = env
            .verify
            .timeout
            .as_ref()
            .and_then(|t| problems.parse(t, Duration::parse));
        let duration = |key: &Option<Spanned<String>>, problems: &mut Problems| {
            key.as_ref()
                .and_then(|d| problems.parse(d, Duration::parse))
        };
        let standby = duration(&env.standby, problems)
            .unwrap_or(Duration::from_std(EnvironmentConfig::DEFAULT_STANDBY));
        let drain = duration(&env.drain, problems)
            .unwrap_or(Duration::from_std(EnvironmentConfig::DEFAULT_DRAIN));
        let request_timeout = duration(&env.request_timeout, problems);
        if let (Some(name), Some(listen)) = (parsed_name, listen) {
            envs.push(EnvironmentConfig {
                name,
                after,
                listen,
                vars: env.vars.clone(),
                verify: VerifyConfig {
                    tests: env.verify.tests.clone(),
                    timeout,
                },
                standby,
                drain,
                request_timeout,
            });
        }
    }
    if let Some(cycle) = find_cycle(&envs) {
        let first = raw.iter().find(|(n, _)| n.get_ref() == cycle[0].as_str());
        let span = first
            .and_then(|(_, e)| e.after.as_ref())
            .map_or(0..0, Spanned::span);
        let path: Vec<&str> = cycle.iter().map(EnvName::as_str).collect();
        problems.add(
            span,
            format!("environments form a cycle in `after`: {}", path.join(" → ")),
            "one of them must come first: remove its `after`".to_owned(),
        );
        return envs;
    }
    order(envs)
}

/// Whether two addresses would collide; port 0 (any free port) never does.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Follows `after` from each environment; returns the names around the first cycle found.
fn find_cycle(envs: &[EnvironmentConfig]) -> Option<Vec<EnvName>> {
    let after: HashMap<&EnvName, &EnvName> = envs
        .iter()
        .filter_map(|e| Some((&e.name, e.after.as_ref()?)))
        .collect();
    for env in envs {
        let mut path = vec![&env.name];
        let mut at = &env.name;
        while let Some(next) = after.get(at) {
            if let Some(pos) = path.iter().position(|p| p == next) {
                let mut cycle: Vec<EnvName> = path[pos..].iter().map(|n| (*n).clone()).collect();
                cycle.push((*next).clone());
                return Some(cycle);
            }
            path.push(next);
            at = next;
        }
    }
    None
}

/// Sorts environments so each comes after the one it names; file order otherwise. Needs no cycle.
fn order(mut envs: Vec<EnvironmentConfig>) -> Vec<EnvironmentConfig> {
    let mut ordered: Vec<EnvironmentConfig> = Vec::with_capacity(envs.len());
    while !envs.is_empty() {
        let ready = envs
            .iter()
            .position(|e| {
                e.after
                    .as_ref()
                    .is_none_or(|a| ordered.iter().any(|o| &o.name == a))
            })
            .unwrap_or(0);
        ordered.push(envs.remove(ready));
    }
    ordered
}

fn parse_address(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not an address: write IP:PORT, for example \"127.0.0.1:8101\" (host names are not accepted)")
    })
}

/// The known key closest to `word`, if it is close enough to be a likely typo.
fn closest<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Turns a TOML/serde error into a problem, adding the closest key for unknown keys.
fn toml_problem(e: &toml::de::Error, src: &str) -> ConfigProblem {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let known: Vec<&str> = rest
            .split('`')
            .skip(1)
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|c| c.get(1).copied())
            .collect();
        let help = match closest(field, known.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None if known.is_empty() => "remove it".to_owned(),
            None => format!("remove it; the keys known here are: {}", known.join(", ")),
        };
        return ConfigProblem {
            span,
            message: format!("unknown key `{field}`"),
            help: Some(help),
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let help = match field {
            "run" => {
                "add the command that starts the app, for example run = \"./web --port ${PORT}\""
            }
            "listen" => {
                "give the environment its stable address, for example listen = \"127.0.0.1:8101\""
            }
            _ => "add it",
        };
        return ConfigProblem {
            span,
            message: format!("missing key `{field}`"),
            help: Some(help.to_owned()),
        };
    }
    let _ = src;
    ConfigProblem {
        span,
        message: msg.to_owned(),
        help: None,
    }
}

/// The commented example written by `shipgate init`; it must parse as a valid config.
pub const EXAMPLE: &str = r#"# shipgate.toml: how releases of your apps move from development to production.
# Reference: see the README's "Config reference". Check this file with `shipgate validate`.

[server]
listen = "127.0.0.1:7300"          # API (and, later, the dashboard)
data_dir = ".shipgate"             # database, artifacts, logs and the admin token
# database = "sqlite://.shipgate/shipgate.db"   # the default; PostgreSQL comes later
# max_artifact_size = "512MiB"     # largest release artifact accepted

[apps.web]
run = "./web --port ${PORT}"       # started inside the unpacked release directory
health = "/healthz"                # answers 2xx once an instance is ready
# health_timeout = "30s"
# crash_loop = { crashes = 5, within = "1m" }   # more crashes than this: stop restarting, mark unhealthy

[environments.development]
listen = "127.0.0.1:8101"          # stable address; the router forwards it to the live instance
vars = { LOG_LEVEL = "debug" }     # environment variables of every instance here
# standby = "10m"                  # the replaced release keeps running this long: rollback is instant
# drain = "30s"                    # requests in flight on a replaced instance may take this long
# request_timeout = "60s"          # the router answers 504 if an instance takes longer to answer

[environments.testing]
after = "development"              # only releases verified in development may enter
listen = "127.0.0.1:8102"
verify.tests = ["curl -fsS ${URL}/healthz"]   # must exit 0 against the freshly switched environment
# verify.timeout = "5m"

[environments.staging]
after = "testing"
listen = "127.0.0.1:8103"

[environments.production]
after = "staging"
listen = "127.0.0.1:8104"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> String {
        Config::parse(src, Path::new("/p"))
            .unwrap_err()
            .render("shipgate.toml", src)
    }

    const BASE: &str = "[apps.web]\nrun = \"./web\"\n";

    #[test]
    fn example_is_valid_and_ordered() {
        let c = Config::parse(EXAMPLE, Path::new("/p")).unwrap();
        let names: Vec<_> = c.environments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["development", "testing", "staging", "production"]);
        assert_eq!(c.server.data_dir, Path::new("/p/.shipgate"));
        assert_eq!(c.apps[0].health, "/healthz");
    }

    #[test]
    fn unknown_key_suggests_closest() {
        let src = format!("{BASE}[environments.dev]\nlisten = \"127.0.0.1:8101\"\nlisen = \"x\"\n");
        insta::assert_snapshot!(errors(&src), @r"
        shipgate.toml:5:1: unknown key `lisen`
          help: did you mean `listen`?
        ");
    }

    #[test]
    fn after_naming_nothing() {
        let src = format!(
            "{BASE}[environments.testing]\nlisten = \"127.0.0.1:8101\"\n[environments.staging]\nafter = \"testin\"\nlisten = \"127.0.0.1:8102\"\n"
        );
        insta::assert_snapshot!(errors(&src), @r#"
        shipgate.toml:6:9: `after = "testin"` names no environment
          help: did you mean `testing`?
        "#);
    }

    #[test]
    fn cycle_is_named() {
        let src = format!(
            "{BASE}[environments.a]\nafter = \"b\"\nlisten = \"127.0.0.1:8101\"\n[environments.b]\nafter = \"a\"\nlisten = \"127.0.0.1:8102\"\n"
        );
        insta::assert_snapshot!(errors(&src), @r"
        shipgate.toml:4:9: environments form a cycle in `after`: a → b → a
          help: one of them must come first: remove its `after`
        ");
    }

    #[test]
    fn duplicate_address_malformed_address_and_duration() {
        let src = format!(
            "{BASE}health_timeout = \"ten\"\n[environments.a]\nlisten = \"127.0.0.1:8101\"\n[environments.b]\nlisten = \"0.0.0.0:8101\"\n[environments.c]\nlisten = \"localhost\"\nverify.timeout = \"5 minutes\"\n"
        );
        insta::assert_snapshot!(errors(&src), @r#"
        shipgate.toml:3:18: `ten` is not a duration: write a number and a unit (ms, s, m, h, d), for example "30s", "10m" or "1h30m"
        shipgate.toml:7:10: environment `b` listens on 0.0.0.0:8101, which environment `a` already uses
          help: give every environment its own address
        shipgate.toml:9:10: `localhost` is not an address: write IP:PORT, for example "127.0.0.1:8101" (host names are not accepted)
        shipgate.toml:10:18: `5 minutes` is not a duration: write a number and a unit (ms, s, m, h, d), for example "30s", "10m" or "1h30m"
        "#);
    }

    #[test]
    fn port_zero_never_collides() {
        let src = format!(
            "{BASE}[server]\nlisten = \"127.0.0.1:0\"\n[environments.a]\nlisten = \"127.0.0.1:0\"\n[environments.b]\nlisten = \"127.0.0.1:0\"\n"
        );
        assert!(Config::parse(&src, Path::new("/p")).is_ok());
    }

    #[test]
    fn unsupported_gates_are_refused_not_ignored() {
        let src =
            format!("{BASE}[environments.p]\nlisten = \"127.0.0.1:8101\"\nrequire.approvals = 1\n");
        assert!(errors(&src).contains("`require` of environment `p` is not enforced"));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}
