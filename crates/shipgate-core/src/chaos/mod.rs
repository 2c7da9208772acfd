//! Chaos: faults injected on purpose. An HTTP fault rule of an environment's router (abort with
//! a status, or delay) for one app, a share of its requests, optionally a path pattern and a
//! header, and always an end: a fault is never open-ended. What the rules mean and how an
//! injection is checked live here; the router applies them, the engine records them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod experiment;

use crate::{AppName, EnvName};

/// The longest a fault may last where `chaos.max_duration` does not say.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(3600);
/// The longest `chaos.max_duration` may be: every fault ends by itself.
pub const LONGEST_MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);
/// The longest delay a fault may add.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// One HTTP fault rule, as the router applies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HttpFault {
    /// Its number, as the store records it.
    pub id: i64,
    /// The app whose requests it touches.
    pub app: String,
    /// What it does.
    pub action: FaultAction,
    /// The share of matching requests it touches, 0 to 100.
    pub percent: f64,
    /// Only requests whose path (without the query) matches; `*` stands for any run of
    /// characters (`/api/*`).
    #[serde(default)]
    pub path: Option<String>,
    /// Only requests with this header and value (`["x-chaos", "1"]`); the name in any case.
    #[serde(default)]
    pub header: Option<(String, String)>,
    /// When it ends, in milliseconds since the Unix epoch: the router stops applying it then
    /// by itself.
    pub until_ms: i64,
}

/// What a fault does to a request it touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer this status at once; the app never sees the request.
    Abort {
        /// The status (`503`).
        status: u16,
    },
    /// Wait this long, give or take up to `jitter_ms` uniformly, then forward the request.
    Delay {
        /// The delay.
        delay_ms: u64,
        /// The most it varies either way.
        jitter_ms: u64,
    },
}

impl std::fmt::Display for HttpFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.action {
            FaultAction::Abort { status } => write!(f, "abort {status}")?,
            FaultAction::Delay {
                delay_ms,
                jitter_ms: 0,
            } => write!(f, "delay {delay_ms}ms")?,
            FaultAction::Delay {
                delay_ms,
                jitter_ms,
            } => write!(f, "delay {delay_ms}ms ±{jitter_ms}ms")?,
        }
        write!(f, " for {}% of {}", self.percent, self.app)?;
        if let Some(path) = &self.path {
            write!(f, " on {path}")?;
        }
        if let Some((name, value)) = &self.header {
            write!(f, " with {name}: {value}")?;
        }
        Ok(())
    }
}

/// A fault asked for, before it is checked and given its number and end.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultAsk<'a> {
    /// The environment.
    pub env: &'a EnvName,
    /// The app.
    pub app: &'a AppName,
    /// What it does.
    pub action: FaultAction,
    /// The share of requests, 0 to 100.
    pub percent: f64,
    /// A path pattern.
    pub path: Option<&'a str>,
    /// A header, as `name: value`.
    pub header: Option<&'a str>,
    /// How long.
    pub duration: Duration,
}

/// The environment's chaos settings as they bear on an injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChaosRules {
    /// `chaos.allow`.
    pub allow: bool,
    /// `chaos.max_duration`.
    pub max_duration: Duration,
}

/// Why [`check`] refused a fault, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultRefusal {
    /// The environment's `chaos` rules refuse it: chaos is not allowed there, or the fault
    /// lasts longer than they allow. What is allowed where is the config's to say.
    #[error("{0}")]
    NotAllowed(String),
    /// The fault itself cannot be: no duration, a share, status, delay, jitter, path or
    /// header out of its bounds.
    #[error("{0}")]
    Malformed(String),
}

/// Checks `ask` against the environment's rules; answers the header split into name and
/// value, or why it is refused.
pub fn check(
    ask: &FaultAsk<'_>,
    rules: ChaosRules,
) -> Result<Option<(String, String)>, FaultRefusal> {
    let env = ask.env;
    if !rules.allow {
        return Err(FaultRefusal::NotAllowed(format!(
            "environment `{env}` does not allow chaos; set `chaos.allow = true` in [environments.{env}] first"
        )));
    }
    if ask.duration.is_zero() {
        return Err(FaultRefusal::Malformed(
            "a fault needs a duration (--duration 5m)".into(),
        ));
    }
    if ask.duration > rules.max_duration {
        return Err(FaultRefusal::NotAllowed(format!(
            "{} is longer than {env} allows for a fault ({}; `chaos.max_duration`)",
            crate::duration::Duration::from_std(ask.duration),
            crate::duration::Duration::from_std(rules.max_duration)
        )));
    }
    check_fault(ask).map_err(FaultRefusal::Malformed)
}

/// What [`check`] asks of the fault itself, whatever the environment.
fn check_fault(ask: &FaultAsk<'_>) -> Result<Option<(String, String)>, String> {
    if !(ask.percent > 0.0 && ask.percent <= 100.0) {
        return Err(format!(
            "--percent is above 0 and at most 100, not {}",
            ask.percent
        ));
    }
    match ask.action {
        FaultAction::Abort { status } if !(400..=599).contains(&status) => {
            return Err(format!(
                "--abort takes an error status from 400 to 599, not {status}"
            ));
        }
        FaultAction::Delay {
            delay_ms,
            jitter_ms,
        } => {
            if delay_ms == 0 || delay_ms > MAX_DELAY.as_millis() as u64 {
                return Err(format!(
                    "--delay is above 0 and at most {}s",
                    MAX_DELAY.as_secs()
                ));
            }
            if jitter_ms > delay_ms {
                return Err(format!(
                    "--jitter ({jitter_ms}ms) may not be more than the delay ({delay_ms}ms)"
                ));
            }
        }
        FaultAction::Abort { .. } => {}
    }
    if let Some(path) = ask.path
        && !path.starts_with('/')
        && !path.starts_with('*')
    {
        return Err(format!(
            "--path is a path pattern starting with `/` or `*` (`/api/*`), not `{path}`"
        ));
    }
    ask.header.map(parse_header).transpose()
}

/// Whether faults in `env` need an admin: it ends the main path (no environment comes after
/// it), which is where production is.
pub fn needs_admin(config: &crate::Config, env: &EnvName) -> bool {
    config
        .environment(env)
        .is_some_and(|e| e.template.is_none())
        && !config
            .environments
            .iter()
            .any(|e| e.after.as_ref() == Some(env))
}

/// Whether `grant` may inject faults into `env`, HTTP faults or the toxics of its dependency
/// proxies: a deployer of it, where `chaos.allow` is set there, and an admin at the end of the
/// flow (production). The refusal says what to do.
pub fn may_fault(
    config: &crate::Config,
    env: &EnvName,
    grant: &crate::Grant,
) -> Result<(), String> {
    grant
        .check(crate::Action::Promote, Some(env))
        .map_err(|d| d.to_string())?;
    let Some(env_config) = config.environment(env) else {
        return Err(format!("there is no environment `{env}`"));
    };
    if !env_config.chaos.allow {
        return Err(format!(
            "environment `{env}` does not allow chaos; set `chaos.allow = true` in [environments.{env}] first"
        ));
    }
    let grant = &grant.in_env(env, &[crate::Role::Admin]);
    if needs_admin(config, env) && grant.role != crate::Role::Admin {
        return Err(format!(
            "{env} ends the flow (it is production), so faults there need an admin; token `{}` has the role {}",
            grant.name, grant.role
        ));
    }
    Ok(())
}

/// `name: value` as a header to match.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!(
            "--header is `name: value` (`x-chaos: 1`), not `{s}`"
        ));
    };
    let name = name.trim();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("`{name}` is not a header name"));
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_pattern_only() {
        assert!(glob("/api/*", "/api/orders"));
        assert!(glob("/api/*", "/api/"));
        assert!(!glob("/api/*", "/apix"));
        assert!(glob("*.json", "/a/b.json"));
        assert!(glob("/a/*/c", "/a/b/c"));
        assert!(!glob("/a/*/c", "/a/b/d"));
        assert!(glob("/exact", "/exact"));
        assert!(!glob("/exact", "/exact/more"));
        assert!(glob("*", "/anything"));
    }

    #[test]
    fn injections_are_checked_against_the_environment() {
        let env = EnvName::parse("staging").unwrap();
        let app = AppName::parse("web").unwrap();
        let ask = FaultAsk {
            env: &env,
            app: &app,
            action: FaultAction::Abort { status: 503 },
            percent: 10.0,
            path: Some("/api/*"),
            header: Some("X-Chaos: 1"),
            duration: Duration::from_secs(300),
        };
        let allowed = ChaosRules {
            allow: true,
            max_duration: DEFAULT_MAX_DURATION,
        };
        assert_eq!(
            check(&ask, allowed),
            Ok(Some(("x-chaos".into(), "1".into())))
        );
        let refused = |ask: FaultAsk<'_>, rules: ChaosRules| {
            let refusal = check(&ask, rules).unwrap_err();
            let malformed = matches!(refusal, FaultRefusal::Malformed(_));
            // The environment's rules (allow, max_duration) are the config's; the rest the fault's.
            let by_config = refusal.to_string().contains("chaos.allow")
                || refusal.to_string().contains("longer than");
            assert_eq!(malformed, !by_config, "{refusal}");
            refusal.to_string()
        };
        assert!(
            refused(
                ask.clone(),
                ChaosRules {
                    allow: false,
                    ..allowed
                }
            )
            .contains("chaos.allow = true")
        );
        assert!(
            refused(
                FaultAsk {
                    duration: Duration::from_secs(7200),
                    ..ask.clone()
                },
                allowed
            )
            .contains("longer than staging allows")
        );
        assert!(
            refused(
                FaultAsk {
                    percent: 0.0,
                    ..ask.clone()
                },
                allowed
            )
            .contains("--percent")
        );
        assert!(
            refused(
                FaultAsk {
                    action: FaultAction::Abort { status: 200 },
                    ..ask.clone()
                },
                allowed
            )
            .contains("400 to 599")
        );
        assert!(
            refused(
                FaultAsk {
                    action: FaultAction::Delay {
                        delay_ms: 100,
                        jitter_ms: 200
                    },
                    ..ask.clone()
                },
                allowed
            )
            .contains("--jitter")
        );
        assert!(
            refused(
                FaultAsk {
                    header: Some("nocolon"),
                    ..ask.clone()
                },
                allowed
            )
            .contains("name: value")
        );
        assert!(
            refused(
                FaultAsk {
                    path: Some("api"),
                    ..ask
                },
                allowed
            )
            .contains("--path")
        );
    }
}

/// Which way a toxic acts on a TCP proxy's connections: on what the client sends
/// (`upstream`) or on what it receives (`downstream`), as Toxiproxy names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Client to dependency.
    Upstream,
    /// Dependency to client.
    Downstream,
}

impl Stream {
    /// As Toxiproxy writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Downstream => "downstream",
        }
    }
}

fn downstream() -> Stream {
    Stream::Downstream
}

fn full() -> f64 {
    1.0
}

/// A toxic of a TCP proxy, in Toxiproxy's own JSON shape: `{name, type, stream, toxicity,
/// attributes}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Toxic {
    /// Its name in its proxy (`latency_downstream` unless given).
    #[serde(default)]
    pub name: String,
    /// `latency`, `bandwidth`, `slow_close`, `timeout`, `reset_peer`, `slicer` or
    /// `limit_data`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which way it acts (default downstream).
    #[serde(default = "downstream")]
    pub stream: Stream,
    /// The share of connections it acts on, 0 to 1 (default 1).
    #[serde(default = "full")]
    pub toxicity: f64,
    /// Its parameters, as Toxiproxy names them (`latency` and `jitter` in ms, `rate` in KB/s,
    /// `delay`, `timeout`, `average_size`, `size_variation`, `bytes`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// The toxic types and the attributes each takes.
pub const TOXICS: &[(&str, &[&str])] = &[
    ("latency", &["latency", "jitter"]),
    ("bandwidth", &["rate"]),
    ("slow_close", &["delay"]),
    ("timeout", &["timeout"]),
    ("reset_peer", &["timeout"]),
    ("slicer", &["average_size", "size_variation", "delay"]),
    ("limit_data", &["bytes"]),
];

impl Toxic {
    /// Checks the toxic and fills in its default name; the error says what to write.
    pub fn checked(mut self) -> Result<Self, String> {
        let Some((_, known)) = TOXICS.iter().find(|(t, _)| *t == self.kind) else {
            let kinds: Vec<&str> = TOXICS.iter().map(|(t, _)| *t).collect();
            return Err(format!(
                "unknown toxic type `{}`; it is one of {}",
                self.kind,
                kinds.join(", ")
            ));
        };
        if !(0.0..=1.0).contains(&self.toxicity) {
            return Err(format!("toxicity is from 0 to 1, not {}", self.toxicity));
        }
        for (key, value) in &self.attributes {
            if !known.contains(&key.as_str()) {
                return Err(format!(
                    "a {} toxic takes {}, not `{key}`",
                    self.kind,
                    known.join(", ")
                ));
            }
            if value.as_u64().is_none() {
                return Err(format!(
                    "attribute `{key}` of a {} toxic is a whole number of at least 0, not {value}",
                    self.kind
                ));
            }
        }
        if self.name.is_empty() {
            self.name = format!("{}_{}", self.kind, self.stream.as_str());
        }
        Ok(self)
    }

    /// Attribute `key` (0 when absent).
    pub fn attribute(&self, key: &str) -> u64 {
        self.attributes
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }
}

/// A TCP proxy between an app and one of its dependencies, as the data plane runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DependencyProxy {
    /// `ENV.NAME` (`staging.db`).
    pub name: String,
    /// Where the app connects.
    pub listen: std::net::SocketAddr,
    /// Where the dependency is (`host:port`).
    pub upstream: String,
    /// False: the proxy is down (no listener, every connection closed).
    pub enabled: bool,
    /// Its toxics, in the order they were added.
    pub toxics: Vec<Toxic>,
}
