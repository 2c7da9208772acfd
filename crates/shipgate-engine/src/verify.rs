//! Verification after the switch: the environment's `verify.tests` commands, run against the
//! environment's stable address.

use std::process::Stdio;
use std::time::Duration;

use shipgate_core::InstanceId;
use shipgate_core::config::{HttpCheck, VerifyConfig};
use shipgate_core::template::expand;
use shipgate_store::Promotion;
use tokio::io::AsyncReadExt;

use crate::{Engine, EngineError};

/// What one test command did.
pub(crate) struct TestRun {
    pub(crate) passed: bool,
    pub(crate) output: String,
    pub(crate) verdict: String,
}

impl Engine {
    /// Runs every test; returns why verification failed, or None if it passed. Each test is
    /// recorded as a gate with its output.
    pub(crate) async fn verify(
        &self,
        p: &Promotion,
        instance_port: u16,
    ) -> Result<Option<String>, EngineError> {
        let config = self.config();
        let Some(env) = config.environment(&p.env) else {
            return Ok(None);
        };
        let timeout = env
            .verify
            .timeout
            .map_or(VerifyConfig::DEFAULT_TIMEOUT, |t| t.as_std());
        let mut vars =
            self.template_vars(&p.app, &p.env, &p.version, p.digest.as_str(), Some(p.id));
        vars.insert("PORT".to_owned(), instance_port.to_string());
        let mut exported = self.exported_env(&p.env, &vars);
        // The tests get the secrets the instance got.
        match self.secret_env(p).await {
            Ok(secrets) => exported.extend(secrets),
            Err(why) => return Ok(Some(why)),
        }
        for (n, test) in env.verify.tests.iter().enumerate() {
            let command = expand(test, &vars);
            let started_at = self.clock.now();
            let run = self
                .run_recorded_test(p, n, &command, &exported, timeout)
                .await?;
            let dir = self.artifacts.release_dir(&p.digest);
            let output = format!(
                "$ {command}\n(run in the release directory {}; the config's folder is ${{CONFIG_DIR}} = {})\n{}\n{}",
                dir.display(),
                config.server.config_dir.display(),
                run.output,
                run.verdict
            );
            self.gate(p, &format!("test: {test}"), run.passed, output, started_at)
                .await?;
            if !run.passed {
                return Ok(Some(format!("test `{test}` {}", run.verdict)));
            }
        }
        for check in &env.verify.http {
            let started_at = self.clock.now();
            // Every address the environment answers at: each of its hosts, when it has some.
            let mut passed = true;
            let mut outputs = Vec::new();
            let endpoints = self.driver.endpoints(env.name.as_str(), env.listen);
            for addr in &endpoints {
                let url = format!("http://{addr}{}", check.path);
                let (ok, out) = http_check(check, &url, timeout).await;
                passed &= ok;
                outputs.push(if endpoints.len() > 1 {
                    format!("{addr}: {out}")
                } else {
                    out
                });
            }
            let output = outputs.join("\n");
            let name = format!("http: GET {} → {}", check.path, check.status);
            self.gate(p, &name, passed, output.clone(), started_at)
                .await?;
            if !passed {
                return Ok(Some(format!("{name} failed: {}", first_line(&output))));
            }
        }
        if let Some(load) = &env.verify.load
            && let Some(failure) = self.load_gate(p, load).await?
        {
            return Ok(Some(failure));
        }
        if !env.verify.experiments.is_empty() {
            let mut offered = vars.clone();
            offered.extend(exported.clone());
            offered.extend(self.experiment_vars(&p.env));
            return self.run_experiments(p, &offered).await;
        }
        Ok(None)
    }

    /// What an experiment's `{"type": "env"}` values may name besides the release's own
    /// variables: where shipgate's API is (its token, `SHIPGATE_TOKEN`, is minted for each
    /// run), and where its Toxiproxy API is.
    pub fn experiment_vars(
        &self,
        env: &shipgate_core::EnvName,
    ) -> std::collections::BTreeMap<String, String> {
        let config = self.config();
        let mut vars = std::collections::BTreeMap::new();
        if let Some(api) = self.api_url() {
            vars.insert("SHIPGATE_API".to_owned(), api);
        }
        let toxiproxy = config.server.toxiproxy_listen;
        vars.insert("TOXIPROXY_HOST".to_owned(), toxiproxy.ip().to_string());
        vars.insert("TOXIPROXY_PORT".to_owned(), toxiproxy.port().to_string());
        vars.insert("SHIPGATE_URL".to_owned(), self.env_url(env));
        vars
    }
}

impl Engine {
    /// Runs one test command recorded as an instance of the promotion (state `starting`, marked
    /// `SHIPGATE_INSTANCE=<id>` like every instance), so a server killed while it runs finds
    /// its process group at the next start and stops it with the instances it left.
    pub(crate) async fn run_recorded_test(
        &self,
        p: &Promotion,
        n: usize,
        command: &str,
        exported: &std::collections::BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<TestRun, EngineError> {
        let id = InstanceId::test(&p.app, &p.env, p.id, n + 1);
        self.store
            .put_instance(shipgate_store::InstanceRecord::starting(
                p,
                &id,
                String::new(),
            ))
            .await?;
        let mut exported = exported.clone();
        exported.insert("SHIPGATE_INSTANCE".to_owned(), id.to_string());
        let dir = self.artifacts.release_dir(&p.digest);
        let sandbox = self.sandbox_for(&p.app, &p.env);
        let run = run_test(command, &dir, &exported, timeout, sandbox.as_ref()).await;
        self.store.mark_instance_stopped(&id).await?;
        Ok(run)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// One `verify.http` check against the environment's stable address.
async fn http_check(check: &HttpCheck, url: &str, timeout: Duration) -> (bool, String) {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("could not build an HTTP client: {e}")),
    };
    let response = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) => return (false, format!("GET {url} failed: {e}")),
    };
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let shown: String = body.chars().take(2000).collect();
    if status != check.status {
        return (
            false,
            format!(
                "GET {url} answered {status}, expected {}\n{shown}",
                check.status
            ),
        );
    }
    if let Some(pattern) = &check.body
        && !pattern.is_match(&body)
    {
        return (
            false,
            format!("GET {url} answered {status} but the body does not match /{pattern}/\n{shown}"),
        );
    }
    (true, format!("GET {url} answered {status}\n{shown}"))
}

pub(crate) async fn run_test(
    command: &str,
    dir: &std::path::Path,
    env: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
    sandbox: Option<&shipgate_deploy::Sandbox>,
) -> TestRun {
    let mut process = match sandbox {
        None => {
            let mut sh = tokio::process::Command::new("sh");
            for hidden in shipgate_deploy::hidden_from_children() {
                sh.env_remove(hidden);
            }
            sh.arg("-c").arg(command);
            sh
        }
        Some(sandbox) => match shipgate_deploy::sandbox::wrapped(dir, sandbox, command) {
            Ok(args) => {
                let mut bwrap = tokio::process::Command::new(&args[0]);
                bwrap
                    .args(&args[1..])
                    .env_clear()
                    .envs(shipgate_deploy::sandbox::BASE_ENV);
                bwrap
            }
            Err(why) => {
                return TestRun {
                    passed: false,
                    output: String::new(),
                    verdict: format!("could not prepare its sandbox: {why}"),
                };
            }
        },
    };
    let child = process
        .current_dir(dir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return TestRun {
                passed: false,
                output: String::new(),
                verdict: format!("could not start: {e}"),
            };
        }
    };
    let pid = child.id();
    // However the test ends, its own children (which share its process group) end with it:
    // on a timeout, and when its promotion is ended and this run is dropped.
    let _group = KillGroupOnDrop(pid.and_then(|p| i32::try_from(p).ok()));
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut a).await;
            }
        };
        let read_err = async {
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut b).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (a, b, status)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok((a, b, status)) => {
            let mut output = String::from_utf8_lossy(&a).into_owned();
            output.push_str(&String::from_utf8_lossy(&b));
            let (passed, verdict) = match status {
                Ok(s) if s.success() => (true, "exited 0".to_owned()),
                Ok(s) => (
                    false,
                    match s.code() {
                        Some(code) => format!("exited with code {code}"),
                        None => "was killed by a signal".to_owned(),
                    },
                ),
                Err(e) => (false, format!("could not be waited on: {e}")),
            };
            TestRun {
                passed,
                output,
                verdict,
            }
        }
        Err(_) => TestRun {
            passed: false,
            output: String::new(),
            verdict: format!("did not finish within {timeout:?} and was killed"),
        },
    }
}

/// Kills a process group when dropped.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
