//! Chaos Toolkit experiments (the JSON format of chaostoolkit, not a look-alike): a
//! steady-state hypothesis of probes with tolerances, a method of actions and probes with
//! pauses, and rollbacks. What a file says and whether a probe's outcome is within its
//! tolerance live here; the engine runs the activities.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Its title.
    pub title: String,
    /// What it is about (required, as chaostoolkit requires it).
    pub description: String,
    /// Values its activities refer to as `${name}`: literals, or `{"type": "env", "key":
    /// "NAME", "default": ...}`.
    #[serde(default)]
    pub configuration: BTreeMap<String, Value>,
    /// Secrets, by scope, the same way.
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, Value>>,
    /// What must hold before and after the method.
    #[serde(rename = "steady-state-hypothesis", default)]
    pub hypothesis: Option<Hypothesis>,
    /// What is done to the system.
    #[serde(default)]
    pub method: Vec<Activity>,
    /// What undoes it; always run.
    #[serde(default)]
    pub rollbacks: Vec<Activity>,
}

/// The steady-state hypothesis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    /// Its title.
    pub title: String,
    /// Its probes, each with a tolerance.
    #[serde(default)]
    pub probes: Vec<Activity>,
}

/// A probe or an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// `probe` or `action`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What runs it.
    pub provider: Provider,
    /// For a probe of the hypothesis: what its outcome must be.
    #[serde(default)]
    pub tolerance: Option<Value>,
    /// Seconds to wait before and after it.
    #[serde(default)]
    pub pauses: Option<Pauses>,
}

/// Pauses around an activity, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pauses {
    /// Before it.
    #[serde(default)]
    pub before: Option<f64>,
    /// After it.
    #[serde(default)]
    pub after: Option<f64>,
}

/// What runs an activity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Provider {
    /// An HTTP request; its outcome is the status and body.
    Http {
        /// The URL.
        url: String,
        /// The method (GET unless said).
        #[serde(default)]
        method: Option<String>,
        /// Request headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// The JSON body (query parameters for a GET).
        #[serde(default)]
        arguments: Option<Value>,
        /// Seconds to wait for the answer.
        #[serde(default)]
        timeout: Option<f64>,
    },
    /// A command; its outcome is the exit code and output.
    Process {
        /// The program.
        path: String,
        /// Its arguments: one string split on spaces, or a list.
        #[serde(default)]
        arguments: Option<Value>,
        /// Seconds it may take.
        #[serde(default)]
        timeout: Option<f64>,
    },
    /// A Python function: shipgate runs those of chaostoolkit-toxiproxy
    /// (`chaostoxi.toxic.actions`, `chaostoxi.proxy.actions`) against its own proxies.
    Python {
        /// The module.
        module: String,
        /// The function.
        func: String,
        /// Its arguments, by name.
        #[serde(default)]
        arguments: BTreeMap<String, Value>,
    },
}

impl Experiment {
    /// Reads an experiment; the error says where it is wrong.
    pub fn parse(text: &str) -> Result<Experiment, String> {
        let experiment: Experiment = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a Chaos Toolkit experiment: {e} (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if let Some(h) = &experiment.hypothesis
            && let Some(p) = h.probes.iter().find(|p| p.tolerance.is_none())
        {
            return Err(format!(
                "probe `{}` of the steady-state hypothesis has no tolerance",
                p.name
            ));
        }
        if experiment.method.is_empty() {
            return Err("an experiment needs a method: at least one activity".into());
        }
        Ok(experiment)
    }
}

/// What an activity came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The HTTP status or the exit code, when it has one.
    pub status: Option<i64>,
    /// The body or the standard output.
    pub output: String,
    /// Why it could not run at all, if it could not.
    pub error: Option<String>,
}

/// Whether `outcome` is within `tolerance`, as Chaos Toolkit judges it: a number is the
/// status (or exit code), a list any of them, a boolean whether it ran without error, a string
/// the output exactly, and `{"type": "range", "range": [low, high]}` the status within.
pub fn within(tolerance: &Value, outcome: &Outcome) -> bool {
    if outcome.error.is_some() {
        return false;
    }
    match tolerance {
        Value::Bool(b) => {
            *b == outcome
                .status
                .is_none_or(|s| s == 0 || (200..300).contains(&s))
        }
        Value::Number(n) => n.as_i64() == outcome.status,
        Value::Array(list) => list
            .iter()
            .any(|v| v.as_i64().is_some_and(|n| Some(n) == outcome.status)),
        Value::String(s) => outcome.output.trim() == s.trim(),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("range") => {
            let bounds: Vec<f64> = o
                .get("range")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            match (bounds.as_slice(), outcome.status) {
                ([low, high], Some(s)) => (*low..=*high).contains(&(s as f64)),
                _ => false,
            }
        }
        _ => false,
    }
}

/// `text` with each `${name}` replaced from `vars` (unknown names stay as written).
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    crate::template::expand(text, vars)
}

/// `value` with `${name}` replaced in every string inside it.
pub fn substitute_json(value: &Value, vars: &BTreeMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(substitute(s, vars)),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute_json(v, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), substitute_json(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The experiment's configuration and secrets as `${name}` values: literals as they are,
/// `{"type": "env", "key": K, "default": D}` from `env` (what shipgate offers, then the
/// process's environment), else the default.
pub fn variables(
    experiment: &Experiment,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let resolve = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("env") => o
                .get("key")
                .and_then(Value::as_str)
                .and_then(env)
                .or_else(|| o.get("default").and_then(resolve_literal)),
            _ => None,
        }
    };
    let mut vars = BTreeMap::new();
    for (k, v) in &experiment.configuration {
        if let Some(s) = resolve(v) {
            vars.insert(k.clone(), s);
        }
    }
    for scope in experiment.secrets.values() {
        for (k, v) in scope {
            if let Some(s) = resolve(v) {
                vars.insert(k.clone(), s);
            }
        }
    }
    vars
}

fn resolve_literal(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{
      "version": "1.0.0",
      "title": "web survives a slow database",
      "description": "the home page answers while the database is slow",
      "configuration": {
        "app_url": {"type": "env", "key": "URL"},
        "toxiproxy_port": 8474,
        "missing": {"type": "env", "key": "NOPE_NOT_SET", "default": "fallback"}
      },
      "steady-state-hypothesis": {
        "title": "web answers",
        "probes": [{"type": "probe", "name": "home", "tolerance": 200,
          "provider": {"type": "http", "url": "${app_url}/", "timeout": 3}}]
      },
      "method": [{"type": "action", "name": "slow-db",
        "provider": {"type": "python", "module": "chaostoxi.toxic.actions", "func": "create_latency_toxic",
          "arguments": {"for_proxy": "staging.db", "toxic_name": "slow", "latency": 500}},
        "pauses": {"after": 1}}],
      "rollbacks": [{"type": "action", "name": "fast-db",
        "provider": {"type": "python", "module": "chaostoxi.toxic.actions", "func": "delete_toxic",
          "arguments": {"for_proxy": "staging.db", "toxic_name": "slow"}}}]
    }"#;

    #[test]
    fn an_experiment_reads_with_its_variables() {
        let e = Experiment::parse(FILE).unwrap();
        assert_eq!(e.method.len(), 1);
        assert_eq!(e.rollbacks.len(), 1);
        let vars = variables(&e, &|k| {
            (k == "URL").then(|| "http://127.0.0.1:8103".to_owned())
        });
        assert_eq!(vars["app_url"], "http://127.0.0.1:8103");
        assert_eq!(vars["toxiproxy_port"], "8474");
        assert_eq!(vars["missing"], "fallback");
        assert_eq!(
            substitute("${app_url}/x ${other}", &vars),
            "http://127.0.0.1:8103/x ${other}"
        );
        let bad = Experiment::parse(&FILE.replace("\"tolerance\": 200,", "")).unwrap_err();
        assert!(
            bad.contains("probe `home`") && bad.contains("no tolerance"),
            "{bad}"
        );
        assert!(Experiment::parse("{").unwrap_err().contains("line 1"));
    }

    #[test]
    fn tolerances_judge_as_chaos_toolkit_does() {
        let ok = Outcome {
            status: Some(200),
            output: "fine".into(),
            error: None,
        };
        let failed = Outcome {
            status: Some(503),
            output: String::new(),
            error: None,
        };
        let broken = Outcome {
            status: None,
            output: String::new(),
            error: Some("refused".into()),
        };
        assert!(within(&serde_json::json!(200), &ok));
        assert!(!within(&serde_json::json!(200), &failed));
        assert!(within(&serde_json::json!([200, 503]), &failed));
        assert!(within(&serde_json::json!(true), &ok));
        assert!(!within(&serde_json::json!(true), &failed));
        assert!(within(&serde_json::json!("fine"), &ok));
        assert!(within(
            &serde_json::json!({"type": "range", "range": [500, 599]}),
            &failed
        ));
        assert!(!within(&serde_json::json!(200), &broken));
    }
}
