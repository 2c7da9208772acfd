//! Experiments as a gate: each of an environment's `verify.experiments` (Chaos Toolkit files)
//! runs after the switch. The steady-state hypothesis is checked before and after the method;
//! a deviation fails the gate, so the promotion fails and the environment goes back. The
//! rollbacks always run, on failure too. Providers: `http`, `process`, and the functions of
//! chaostoolkit-toxiproxy (`chaostoxi.toxic.actions`, `chaostoxi.proxy.actions`), which act on
//! shipgate's own dependency proxies; shipgate's HTTP faults are reached over its API
//! (`POST ${SHIPGATE_API}/api/v1/chaos`), as the real `chaos run` reaches them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shipgate_core::EventKind;
use shipgate_core::chaos::experiment::{
    self, Activity, Experiment, Outcome, Provider, substitute, substitute_json,
};
use shipgate_core::chaos::{Stream, Toxic};
use shipgate_store::Promotion;

use crate::{Engine, EngineError};

/// How much of an activity's output its line in the gate's output shows.
const SHOWN: usize = 100;

/// The longest an activity waits when its file does not say.
const ACTIVITY_TIMEOUT: Duration = Duration::from_secs(30);

/// What one experiment came to: whether the hypothesis held, and a line per activity.
pub struct ExperimentRun {
    /// True when the steady state held before and after the method.
    pub passed: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    /// Every activity's outcome, in order.
    pub log: String,
}

/// A token minted for one run of an environment's experiments.
struct RunToken {
    name: String,
    secret: String,
}

/// One experiment's run: the promotion it verifies, and what it may do (its own
/// environment's proxies).
struct Trial<'a> {
    p: &'a Promotion,
    grant: shipgate_core::Grant,
}

impl Engine {
    /// Runs the experiments of `p`'s environment, each recorded as a gate; answers why one
    /// failed, or None.
    pub(crate) async fn run_experiments(
        &self,
        p: &Promotion,
        offered: &BTreeMap<String, String>,
    ) -> Result<Option<String>, EngineError> {
        let config = self.config();
        let Some(env) = config.environment(&p.env) else {
            return Ok(None);
        };
        // A token for shipgate's API (`POST /api/v1/chaos`): a deployer of this environment
        // only, for this run only.
        let token = self.mint_run_token(p).await?;
        let mut offered = offered.clone();
        offered.insert("SHIPGATE_TOKEN".to_owned(), token.secret.clone());
        let mut outcome = None;
        for file in &env.verify.experiments {
            let started_at = self.clock.now();
            let path = config.server.config_dir.join(file);
            let run = self.run_experiment(&path, &offered, p).await;
            let name = format!("experiment: {file}");
            let recorded = self
                .gate(p, &name, run.passed, run.log.clone(), started_at)
                .await;
            if let Err(e) = recorded {
                outcome = Some(Err(e));
                break;
            }
            if !run.passed {
                outcome = Some(Ok(Some(format!(
                    "experiment `{file}` failed: {}",
                    run.reason.unwrap_or_default()
                ))));
                break;
            }
        }
        self.store.revoke_token(&token.name, crate::SYSTEM).await?;
        outcome.unwrap_or(Ok(None))
    }

    /// A token that is a deployer of `p`'s environment only, for one run of its experiments.
    async fn mint_run_token(&self, p: &Promotion) -> Result<RunToken, EngineError> {
        let hex = shipgate_core::secret::random_hex(32).map_err(EngineError::DataPlane)?;
        let secret = format!("sg_{hex}");
        let name = format!("experiment-{}-{}-{}", p.env, p.id, &hex[..6]);
        let scope = shipgate_core::EnvScope::parse(p.env.as_str())
            .map_err(|e| EngineError::DataPlane(e.to_string()))?;
        self.store
            .insert_token(
                shipgate_store::NewToken {
                    name: name.clone(),
                    role: shipgate_core::Role::Deployer,
                    envs: vec![scope],
                    hash: shipgate_core::secret::hash(&secret),
                    person: None,
                    expires_at: None,
                },
                crate::SYSTEM,
            )
            .await?;
        Ok(RunToken { name, secret })
    }

    /// Runs one experiment file of promotion `p` with `offered` as what `{"type": "env"}`
    /// values resolve to first (then the server's environment). Its processes run in the
    /// environment's sandbox from the release directory; its toxics act on the environment's
    /// own proxies only.
    pub async fn run_experiment(
        &self,
        path: &Path,
        offered: &BTreeMap<String, String>,
        p: &Promotion,
    ) -> ExperimentRun {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return failed(format!("cannot read {}: {e}", path.display())),
        };
        let experiment = match Experiment::parse(&text) {
            Ok(x) => x,
            Err(e) => return failed(format!("{}: {e}", path.display())),
        };
        let lookup = |k: &str| offered.get(k).cloned().or_else(|| std::env::var(k).ok());
        let mut vars = offered.clone();
        vars.extend(experiment::variables(&experiment, &lookup));
        let trial = Trial {
            p,
            grant: shipgate_core::Grant {
                name: format!(
                    "experiment {}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                // The config's own experiment (an admin wrote it), held to its environment.
                role: shipgate_core::Role::Admin,
                envs: shipgate_core::EnvScope::parse(p.env.as_str())
                    .into_iter()
                    .collect(),
                person: None,
                also: Vec::new(),
            },
        };
        let mut log = format!("experiment: {}\n", experiment.title);
        let mut reason = None;
        if let Some(h) = &experiment.hypothesis {
            log.push_str(&format!("steady state before: {}\n", h.title));
            reason = self.hypothesis(h, &vars, &trial, &mut log).await;
            if let Some(why) = &mut reason {
                *why = format!("the steady state did not hold before the method: {why}");
            }
        }
        if reason.is_none() {
            log.push_str("method:\n");
            for a in &experiment.method {
                self.activity(a, &vars, &trial, &mut log).await;
            }
            if let Some(h) = &experiment.hypothesis {
                log.push_str(&format!("steady state after: {}\n", h.title));
                reason = self
                    .hypothesis(h, &vars, &trial, &mut log)
                    .await
                    .map(|why| format!("the steady state deviated after the method: {why}"));
            }
        }
        log.push_str("rollbacks:\n");
        for a in &experiment.rollbacks {
            self.activity(a, &vars, &trial, &mut log).await;
        }
        log.push_str(match &reason {
            None => "the steady state held\n",
            Some(_) => "DEVIATED\n",
        });
        ExperimentRun {
            passed: reason.is_none(),
            reason,
            log,
        }
    }

    /// Runs the hypothesis's probes; answers the first deviation.
    async fn hypothesis(
        &self,
        h: &experiment::Hypothesis,
        vars: &BTreeMap<String, String>,
        trial: &Trial<'_>,
        log: &mut String,
    ) -> Option<String> {
        for probe in &h.probes {
            let outcome = self.activity(probe, vars, trial, log).await;
            let tolerance = probe.tolerance.clone().unwrap_or(Value::Bool(true));
            let ok = experiment::within(&tolerance, &outcome);
            log.push_str(&format!(
                "    tolerance {tolerance}: {}\n",
                if ok { "within" } else { "NOT within" }
            ));
            if !ok {
                return Some(format!(
                    "probe `{}` gave {}, not within tolerance {tolerance}",
                    probe.name,
                    shown(&outcome)
                ));
            }
        }
        None
    }

    /// Runs one activity with its pauses, logging its outcome.
    async fn activity(
        &self,
        a: &Activity,
        vars: &BTreeMap<String, String>,
        trial: &Trial<'_>,
        log: &mut String,
    ) -> Outcome {
        let pauses = a.pauses.clone().unwrap_or_default();
        pause(pauses.before).await;
        let outcome = match &a.provider {
            Provider::Http {
                url,
                method,
                headers,
                arguments,
                timeout,
            } => {
                let url = substitute(url, vars);
                // shipgate makes the call, but only where the environment could itself.
                let config = self.config();
                let reach = config.environment(&trial.p.env).map(|env| {
                    shipgate_core::network::may_reach_url(&config, env, self.api_addr(), &url)
                });
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.clone(), substitute(v, vars)))
                    .collect();
                let arguments = arguments.as_ref().map(|x| substitute_json(x, vars));
                match reach {
                    Some(Err(why)) => error(why),
                    _ => {
                        http(
                            &url,
                            method.as_deref(),
                            &headers,
                            arguments,
                            seconds(*timeout),
                        )
                        .await
                    }
                }
            }
            Provider::Process {
                path,
                arguments,
                timeout,
            } => {
                let args = match arguments.as_ref().map(|x| substitute_json(x, vars)) {
                    Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
                    Some(Value::Array(list)) => list
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect(),
                    _ => Vec::new(),
                };
                let command: Vec<String> = std::iter::once(substitute(path, vars))
                    .chain(args)
                    .map(|a| quoted(&a))
                    .collect();
                let dir = self.artifacts.release_dir(&trial.p.digest);
                let sandbox = self.sandbox_for(&trial.p.app, &trial.p.env);
                let run = crate::verify::run_test(
                    &format!("exec {}", command.join(" ")),
                    &dir,
                    vars,
                    seconds(*timeout),
                    sandbox.as_ref(),
                )
                .await;
                let code = if run.passed {
                    Some(0)
                } else {
                    run.verdict
                        .strip_prefix("exited with code ")
                        .and_then(|c| c.parse::<i64>().ok())
                };
                Outcome {
                    status: code,
                    output: run.output,
                    error: code.is_none().then_some(run.verdict),
                }
            }
            Provider::Python {
                module,
                func,
                arguments,
            } => {
                let arguments: BTreeMap<String, Value> = arguments
                    .iter()
                    .map(|(k, v)| (k.clone(), substitute_json(v, vars)))
                    .collect();
                self.python(module, func, &arguments, trial).await
            }
        };
        log.push_str(&format!("  {} {}: {}\n", a.kind, a.name, shown(&outcome)));
        pause(pauses.after).await;
        outcome
    }

    /// The chaostoolkit-toxiproxy functions, on shipgate's own proxies.
    async fn python(
        &self,
        module: &str,
        func: &str,
        args: &BTreeMap<String, Value>,
        trial: &Trial<'_>,
    ) -> Outcome {
        let text = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let number = |k: &str| args.get(k).and_then(Value::as_u64).unwrap_or(0);
        let toxic = |kind: &str, attributes: &[(&str, u64)]| Toxic {
            name: text("toxic_name"),
            kind: kind.to_owned(),
            stream: Stream::Downstream,
            toxicity: 1.0,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect(),
        };
        let add = match (module, func) {
            ("chaostoxi.toxic.actions", "create_latency_toxic") => Some(toxic(
                "latency",
                &[("latency", number("latency")), ("jitter", number("jitter"))],
            )),
            ("chaostoxi.toxic.actions", "create_bandwith_degradation_toxic") => {
                Some(toxic("bandwidth", &[("rate", number("rate"))]))
            }
            ("chaostoxi.toxic.actions", "create_slow_connection_close_toxic") => {
                Some(toxic("slow_close", &[("delay", number("delay"))]))
            }
            ("chaostoxi.toxic.actions", "create_timeout_toxic") => {
                Some(toxic("timeout", &[("timeout", number("timeout"))]))
            }
            ("chaostoxi.toxic.actions", "create_slicer_toxic") => Some(toxic(
                "slicer",
                &[
                    ("average_size", number("average_size")),
                    ("size_variation", number("size_variation")),
                    ("delay", number("delay")),
                ],
            )),
            ("chaostoxi.toxic.actions", "create_limiter_toxic") => {
                Some(toxic("limit_data", &[("bytes", number("bytes_limit"))]))
            }
            ("chaostoxi.toxic.actions", "create_toxic") => {
                let json = serde_json::json!({
                    "name": text("toxic_name"),
                    "type": text("toxic_type"),
                    "stream": args.get("stream").cloned().unwrap_or(Value::from("downstream")),
                    "toxicity": args.get("toxicity").cloned().unwrap_or(Value::from(1.0)),
                    "attributes": args.get("attributes").cloned().unwrap_or(Value::Object(Default::default())),
                });
                match crate::chaos::toxic_from(json) {
                    Ok(t) => Some(t),
                    Err(r) => return error(r.message),
                }
            }
            _ => None,
        };
        let proxy = if module == "chaostoxi.proxy.actions" {
            text("proxy_name")
        } else {
            text("for_proxy")
        };
        let done = if let Some(t) = add {
            let t = match t.checked() {
                Ok(t) => t,
                Err(e) => return error(e),
            };
            let said = format!("toxic {} added by the experiment", t.name);
            self.change_proxy(&proxy, &trial.grant, move |p| {
                p.toxics.retain(|x| x.name != t.name);
                p.toxics.push(t);
                Ok((EventKind::ChaosInjected, said))
            })
            .await
            .map(|_| ())
        } else {
            match (module, func) {
                ("chaostoxi.toxic.actions", "delete_toxic") => {
                    let name = text("toxic_name");
                    self.change_proxy(&proxy, &trial.grant, move |p| {
                        p.toxics.retain(|x| x.name != name);
                        Ok((
                            EventKind::ChaosEnded,
                            format!("toxic {name} removed by the experiment"),
                        ))
                    })
                    .await
                    .map(|_| ())
                }
                ("chaostoxi.proxy.actions", "disable_proxy" | "enable_proxy") => {
                    let up = func == "enable_proxy";
                    self.change_proxy(&proxy, &trial.grant, move |p| {
                        p.enabled = up;
                        Ok(if up {
                            (EventKind::ChaosEnded, "up (the experiment)".to_owned())
                        } else {
                            (EventKind::ChaosInjected, "down (the experiment)".to_owned())
                        })
                    })
                    .await
                    .map(|_| ())
                }
                ("chaostoxi.proxy.actions", "reset") => self.reset_proxies(&trial.grant).await,
                _ => {
                    return error(format!(
                        "shipgate runs http and process providers and the functions of chaostoolkit-toxiproxy; `{module}.{func}` is none of them"
                    ));
                }
            }
        };
        match done {
            Ok(()) => Outcome {
                status: Some(0),
                output: format!("{module}.{func} done"),
                error: None,
            },
            Err(r) => error(r.message),
        }
    }
}

fn failed(reason: String) -> ExperimentRun {
    ExperimentRun {
        passed: false,
        log: format!("{reason}\n"),
        reason: Some(reason),
    }
}

fn error(e: String) -> Outcome {
    Outcome {
        status: None,
        output: String::new(),
        error: Some(e),
    }
}

fn shown(o: &Outcome) -> String {
    if let Some(e) = &o.error {
        return format!("error: {e}");
    }
    let trimmed = o.output.trim();
    let mut output: String = trimmed.chars().take(SHOWN).collect();
    if trimmed.chars().count() > SHOWN {
        output.push('…');
    }
    match o.status {
        Some(s) => format!("{s} {output}"),
        None => output,
    }
}

fn seconds(s: Option<f64>) -> Duration {
    s.filter(|s| *s > 0.0 && s.is_finite())
        .map_or(ACTIVITY_TIMEOUT, Duration::from_secs_f64)
}

async fn pause(s: Option<f64>) {
    if let Some(s) = s.filter(|s| *s > 0.0 && s.is_finite()) {
        tokio::time::sleep(Duration::from_secs_f64(s.min(3600.0))).await;
    }
}

async fn http(
    url: &str,
    method: Option<&str>,
    headers: &BTreeMap<String, String>,
    arguments: Option<Value>,
    timeout: Duration,
) -> Outcome {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return error(e.to_string()),
    };
    let method = method.unwrap_or("GET").to_ascii_uppercase();
    let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return error(format!("`{method}` is not an HTTP method"));
    };
    let mut req = client.request(m.clone(), url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if let Some(args) = arguments {
        req = if m == reqwest::Method::GET {
            let query: Vec<(String, String)> = args
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            req.query(&query)
        } else {
            req.json(&args)
        };
    }
    match req.send().await {
        Ok(r) => {
            let status = i64::from(r.status().as_u16());
            let body = r.text().await.unwrap_or_default();
            Outcome {
                status: Some(status),
                output: body,
                error: None,
            }
        }
        Err(e) => error(format!("{method} {url}: {e}")),
    }
}

/// `s` as one word for `sh`.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
