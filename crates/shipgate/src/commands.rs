//! One function per command.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};
use shipgate_core::{AppName, Version};

use crate::cli::{BenchCommand, Cli, Command, DataCommand, Global, ReleaseCommand, TokenCommand};
use crate::client::{Client, connect};
use crate::config_file;
use crate::output::{Printer, table};

/// Runs a command; `Ok(FAILURE)` is a refusal already explained to the user.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Printer::new(cli.global.output);
    let g = &cli.global;
    match cli.command {
        Command::Init => init(&g.config),
        Command::Validate => validate(&g.config, out),
        Command::Server => server(&g.config).await,
        Command::Demo { exit } => crate::demo::run(exit, out).await,
        Command::Release(ReleaseCommand::Create {
            app,
            version,
            artifact,
            commit,
            notes,
        }) => {
            release_create(
                g,
                out,
                app.as_str(),
                version.as_str(),
                &artifact,
                commit,
                notes,
            )
            .await
        }
        Command::Release(ReleaseCommand::List { app }) => {
            release_list(g, out, app.map(|a| a.to_string())).await
        }
        Command::Promote {
            release,
            to,
            wait,
            override_reason,
        } => {
            let body = json!({ "release": release.to_string(), "env": to.as_str(), "override": override_reason });
            promote(g, out, body, wait).await
        }
        Command::Approve {
            release,
            env,
            comment,
        } => decide(g, out, &release.to_string(), env.as_str(), shipgate_core::Verdict::Approve, comment).await,
        Command::Reject {
            release,
            env,
            comment,
        } => decide(g, out, &release.to_string(), env.as_str(), shipgate_core::Verdict::Reject, Some(comment)).await,
        Command::Freeze { env, all: _, reason } => {
            freeze(g, out, env.map(|e| e.to_string()), Some(reason)).await
        }
        Command::Unfreeze { env, all: _ } => freeze(g, out, env.map(|e| e.to_string()), None).await,
        Command::Rollback { app, env, to, wait } => {
            rollback(
                g,
                out,
                app.as_str(),
                env.as_str(),
                to.map(|v| v.to_string()),
                wait,
            )
            .await
        }
        Command::Status { app } => status(g, out, app.map(|a| a.to_string())).await,
        Command::Data(DataCommand::Refresh { app, from, to }) => {
            data_refresh(g, out, app.as_str(), from.as_str(), to.as_str()).await
        }
        Command::Data(DataCommand::Check { app, env }) => {
            data_check(g, out, app.as_str(), env.as_str()).await
        }
        Command::Diff { app, env_a, env_b } => {
            diff(g, out, app.as_str(), env_a.as_str(), env_b.as_str()).await
        }
        Command::Drift { app, env, heal } => match (app, env, heal) {
            (Some(app), Some(env), true) => drift_heal(g, out, app.as_str(), env.as_str()).await,
            (None, _, true) => Err(anyhow::anyhow!(crate::client::Refused::local(
                400,
                "name the app to heal: shipgate drift APP --env ENV --heal",
            ))),
            (app, _, _) => drift(g, out, app.map(|a| a.to_string())).await,
        },
        Command::History { app, env, limit } => {
            history(g, out, app.as_str(), env.map(|e| e.to_string()), limit).await
        }
        Command::Logs {
            app,
            env,
            follow,
            lines,
        } => logs(g, app.as_str(), env.as_str(), follow, lines).await,
        Command::Audit {
            verify,
            app,
            env,
            limit,
        } => {
            audit(
                g,
                out,
                verify,
                app.map(|a| a.to_string()),
                env.map(|e| e.to_string()),
                limit,
            )
            .await
        }
        Command::Token(command) => token(g, out, command).await,
        Command::Bench(BenchCommand::Promote { runs }) => crate::bench::promote(runs).await,
        Command::Bench(BenchCommand::Dashboard { runs }) => crate::bench::dashboard::run(runs).await,
        Command::Bench(BenchCommand::Mask { rows }) => crate::bench::mask::run(rows).await,
        Command::Bench(BenchCommand::Router {
            duration,
            cycles,
            rollbacks,
            load_duration,
            connections,
            client_threads,
        }) => {
            crate::bench::router::run(crate::bench::router::Options {
                duration,
                cycles,
                rollbacks,
                load_duration,
                connections,
                client_threads,
            })
            .await
        }
        Command::SampleApp { port } => crate::sample::serve(port).await,
        Command::SampleSmoke {
            url,
            expect_version,
        } => crate::sample::smoke(&url, &expect_version).await,
    }
    .or_else(|e| refusal_to_exit_code(e, out))
}

/// A refusal from the server is the user's answer, not a crash: print it and exit 1. With
/// `--output json` its problem+json body goes to stdout too, for scripts.
fn refusal_to_exit_code(e: anyhow::Error, out: Printer) -> anyhow::Result<ExitCode> {
    match e.downcast_ref::<crate::client::Refused>() {
        Some(r) => {
            if let (true, Some(problem)) = (out.json(), &r.problem) {
                println!("{problem}");
            }
            eprintln!("error: {}", r.detail);
            Ok(ExitCode::FAILURE)
        }
        None => Err(e),
    }
}

fn init(path: &Path) -> anyhow::Result<ExitCode> {
    if path.exists() {
        eprintln!(
            "error: {} already exists; nothing was written (edit it, or choose another file with -c FILE)",
            path.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "error: {} already exists; nothing was written",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    };
    std::io::Write::write_all(&mut file, shipgate_core::config::EXAMPLE.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {}; check it with `shipgate validate`, then start the server with `shipgate server`",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn validate(path: &Path, out: Printer) -> anyhow::Result<ExitCode> {
    match config_file::load(path)? {
        Ok((c, _)) => {
            let envs: Vec<&str> = c.environments.iter().map(|e| e.name.as_str()).collect();
            let apps: Vec<&str> = c.apps.iter().map(|a| a.name.as_str()).collect();
            let summary = json!({ "valid": true, "apps": apps, "environments": envs });
            out.print(&summary, |_| {
                format!(
                    "{} is valid: apps {}; environments {}",
                    path.display(),
                    apps.join(", "),
                    envs.join(" → ")
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        Err(invalid) => {
            eprint!("{}", invalid.0);
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn server(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match config_file::load(path)? {
        Ok((c, _)) => c,
        Err(invalid) => {
            eprint!("{}", invalid.0);
            eprintln!("error: the server does not start on an invalid config");
            return Ok(ExitCode::FAILURE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let server = shipgate_server::Server::start(Arc::new(config), shutdown_signal()).await?;
    eprintln!("shipgate serving its API on http://{}", server.addr);
    server.wait().await?;
    eprintln!("shipgate stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The archive to upload: a directory packed into a temporary .tar.gz, or the user's own file.
pub enum ArtifactFile {
    /// Packed from a directory; deleted when dropped.
    Packed(tempfile::TempPath),
    /// A .tar or .tar.gz given as is.
    Given(std::path::PathBuf),
}

impl ArtifactFile {
    /// Packs a directory, or takes an archive file as it is.
    pub fn prepare(path: &Path) -> anyhow::Result<Self> {
        if path.is_dir() {
            let temp = tempfile::Builder::new()
                .suffix(".tar.gz")
                .tempfile()
                .context("creating a temporary archive")?;
            shipgate_store::artifact::pack_dir(path, std::io::BufWriter::new(temp.as_file()))
                .with_context(|| format!("packing {}", path.display()))?;
            return Ok(Self::Packed(temp.into_temp_path()));
        }
        if !path.is_file() {
            anyhow::bail!(
                "{} is neither a directory nor a .tar/.tar.gz file",
                path.display()
            );
        }
        Ok(Self::Given(path.to_owned()))
    }

    /// Where the archive is.
    pub fn path(&self) -> &Path {
        match self {
            Self::Packed(p) => p,
            Self::Given(p) => p,
        }
    }
}

/// Registers a release with the server; shared by the command and the demo.
pub async fn upload(
    client: &Client,
    app: &str,
    version: &str,
    artifact: &Path,
    commit: Option<String>,
    notes: Option<String>,
) -> anyhow::Result<Value> {
    AppName::parse(app).map_err(|e| anyhow::anyhow!(e.0))?;
    Version::parse(version).map_err(|e| anyhow::anyhow!(e.0))?;
    let file = ArtifactFile::prepare(artifact)?;
    let digest = shipgate_store::artifact::digest_file(file.path())
        .with_context(|| format!("hashing {}", artifact.display()))?;
    let mut query = vec![
        ("version", version.to_owned()),
        ("digest", digest.to_string()),
    ];
    query.extend(commit.map(|c| ("commit", c)));
    query.extend(notes.map(|n| ("notes", n)));
    client.upload_release(app, &query, file.path()).await
}

async fn release_create(
    g: &Global,
    out: Printer,
    app: &str,
    version: &str,
    artifact: &Path,
    commit: Option<String>,
    notes: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let answer = upload(&client, app, version, artifact, commit, notes).await?;
    out.print(&answer, |a| {
        let r = &a["release"];
        if a["created"].as_bool() == Some(true) {
            format!(
                "registered {}@{} ({}, {} bytes)",
                r["app"].as_str().unwrap_or(""),
                r["version"].as_str().unwrap_or(""),
                r["digest"].as_str().unwrap_or(""),
                r["size"]
            )
        } else {
            format!(
                "{}@{} is already registered with this content ({}); nothing changed",
                r["app"].as_str().unwrap_or(""),
                r["version"].as_str().unwrap_or(""),
                r["digest"].as_str().unwrap_or("")
            )
        }
    });
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn short_digest(v: &Value) -> String {
    let d = s(v);
    d.strip_prefix("sha256:")
        .map_or(d.clone(), |h| format!("sha256:{}", &h[..h.len().min(12)]))
}

async fn release_list(g: &Global, out: Printer, app: Option<String>) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query: Vec<(&str, String)> = app.map(|a| ("app", a)).into_iter().collect();
    let releases: Vec<Value> = client.get("/releases", &query).await?;
    out.print(&releases, |rs| {
        let rows: Vec<Vec<String>> = rs
            .iter()
            .map(|r| {
                vec![
                    s(&r["app"]),
                    s(&r["version"]),
                    short_digest(&r["digest"]),
                    s(&r["created_by"]),
                    s(&r["created_at"]),
                    s(&r["commit"]),
                ]
            })
            .collect();
        table(
            &["APP", "VERSION", "DIGEST", "BY", "CREATED", "COMMIT"],
            &rows,
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// Waits for a promotion when asked, printing progress; exit code follows its outcome.
async fn finish_promotion(
    client: &Client,
    out: Printer,
    promotion: Value,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let id = promotion["id"].as_i64().unwrap_or_default();
    let what = format!(
        "{}@{} → {}",
        s(&promotion["app"]),
        s(&promotion["version"]),
        s(&promotion["env"])
    );
    if !wait {
        out.print(&promotion, |p| match p["state"].as_str() {
            // A rollback to the warm standby is done by the time the server answers.
            Some("succeeded") => format!("promotion {id} succeeded: {what}"),
            _ => format!(
                "promotion {id} accepted: {what} (follow it: shipgate history {} --env {})",
                s(&p["app"]),
                s(&p["env"])
            ),
        });
        return Ok(ExitCode::SUCCESS);
    }
    let done = client
        .wait_promotion(id, |state| out.progress(&format!("{what}: {state}")))
        .await?;
    let state = s(&done["state"]);
    out.print(&done, |d| {
        let mut text = format!("promotion {id} {state}: {what}");
        if let Some(reason) = d["reason"].as_str() {
            text.push_str(&format!("\n  reason: {reason}"));
        }
        if let Some(failed) = d["gates"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["passed"] == false))
        {
            text.push_str(&format!("\n  {} output:\n", s(&failed["name"])));
            for line in s(&failed["output"])
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                text.push_str(&format!("    {line}\n"));
            }
        }
        text
    });
    Ok(if state == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn promote(g: &Global, out: Printer, body: Value, wait: bool) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let promotion: Value = client.post("/promotions", &body).await?;
    finish_promotion(&client, out, promotion, wait).await
}

/// `approve` and `reject`.
async fn decide(
    g: &Global,
    out: Printer,
    release: &str,
    env: &str,
    verdict: shipgate_core::Verdict,
    comment: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let body = json!({ "release": release, "env": env, "verdict": verdict, "comment": comment });
    let answer: Value = client.post("/approvals", &body).await?;
    let id = answer["promotion"]["id"].as_i64().unwrap_or_default();
    out.print(&answer, |a| {
        let verdict = verdict.past();
        let mut text = format!(
            "{} {verdict} {release} into {env} (promotion {id})",
            s(&a["decision"]["actor"])
        );
        if verdict == shipgate_core::Verdict::Reject.past() {
            text.push_str("; it will not deploy");
        }
        text.push_str(&format!(
            "\n  see what it waits on: shipgate status {}",
            release.split('@').next().unwrap_or(release)
        ));
        text
    });
    Ok(ExitCode::SUCCESS)
}

/// `freeze` (with a reason) and `unfreeze` (without); no environment means all of them.
async fn freeze(
    g: &Global,
    out: Printer,
    env: Option<String>,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let scope = env
        .clone()
        .unwrap_or_else(|| "every environment".to_owned());
    let freezing = reason.is_some();
    let answer: Value = match reason {
        Some(reason) => {
            client
                .post("/freezes", &json!({ "env": env, "reason": reason }))
                .await?
        }
        None => {
            let path = match &env {
                Some(e) => format!("/freezes?env={e}"),
                None => "/freezes".to_owned(),
            };
            client.delete(&path).await?
        }
    };
    out.print(&answer, |f| {
        if freezing {
            format!(
                "{scope} is frozen: {}\n  promotions there wait until: shipgate unfreeze {}",
                s(&f["reason"]),
                if f["env"].is_null() {
                    "--all".to_owned()
                } else {
                    format!("--env {scope}")
                }
            )
        } else {
            format!("{scope} is no longer frozen (it was: {})", s(&f["reason"]))
        }
    });
    Ok(ExitCode::SUCCESS)
}

async fn rollback(
    g: &Global,
    out: Printer,
    app: &str,
    env: &str,
    to: Option<String>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let promotion: Value = client
        .post("/rollbacks", &json!({ "app": app, "env": env, "to": to }))
        .await?;
    finish_promotion(&client, out, promotion, wait).await
}

async fn status(g: &Global, out: Printer, app: Option<String>) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query: Vec<(&str, String)> = app.map(|a| ("app", a)).into_iter().collect();
    let apps: Vec<Value> = client.get("/status", &query).await?;
    out.print(&apps, |apps| render_status(apps));
    Ok(ExitCode::SUCCESS)
}

async fn diff(g: &Global, out: Printer, app: &str, a: &str, b: &str) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query = [
        ("app", app.to_owned()),
        ("a", a.to_owned()),
        ("b", b.to_owned()),
    ];
    let diff: Value = client.get("/diff", &query).await?;
    out.print(&diff, |d| {
        let show = |item: &Value, side: &str| {
            if item["secret"] == true {
                "(secret)".to_owned()
            } else {
                item[side].as_str().map_or("-".to_owned(), str::to_owned)
            }
        };
        let rows: Vec<Vec<String>> = d["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["class"] != "same")
            .map(|i| {
                let class = match i["class"].as_str().unwrap_or_default() {
                    "expected" => "expected",
                    "unexpected" => "UNEXPECTED",
                    "only_in_a" => "ONLY IN A",
                    "only_in_b" => "ONLY IN B",
                    other => other,
                }
                .to_owned();
                let (va, vb) = if i["secret"] == true {
                    ("(secret, differs)".to_owned(), "(secret, differs)".to_owned())
                } else {
                    (show(i, "a"), show(i, "b"))
                };
                vec![class, s(&i["key"]), va, vb]
            })
            .collect();
        let same = d["items"]
            .as_array()
            .map_or(0, |i| i.iter().filter(|i| i["class"] == "same").count());
        let mut text = format!("{app}: {a} (A) compared with {b} (B); {same} items the same\n");
        if !rows.is_empty() {
            text.push_str(&table(&["CLASS", "ITEM", &format!("A: {a}"), &format!("B: {b}")], &rows));
        }
        text.push_str(if d["unexpected"] == true {
            "unexpected differences: fix them, or declare them in `differs` of the environment that mirrors the other\n"
        } else {
            "no unexpected difference\n"
        });
        text
    });
    Ok(if diff["unexpected"] == true {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn data_refresh(
    g: &Global,
    out: Printer,
    app: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let started = std::time::Instant::now();
    let mut last: Option<Value> = None;
    let body = json!({ "app": app, "from": from, "to": to });
    client
        .post_lines("/data/refresh", &body, |m| {
            if let Some(p) = m.get("progress") {
                let (rows, total) = (
                    p["rows"].as_f64().unwrap_or(0.0),
                    p["total"].as_f64().unwrap_or(0.0),
                );
                let rate = rows / started.elapsed().as_secs_f64().max(1e-3);
                let eta = if rate > 0.0 {
                    (total - rows).max(0.0) / rate
                } else {
                    0.0
                };
                out.progress(&format!(
                    "{:<16} {:>10}/{:<10} rows  {:>9.0} rows/s  ETA {:>4.0}s",
                    s(&p["table"]),
                    rows,
                    total,
                    rate,
                    eta
                ));
            } else {
                last = Some(m);
            }
        })
        .await?;
    let Some(last) = last else {
        anyhow::bail!("the server ended the refresh without an outcome");
    };
    if let Some(reason) = last.get("failed").and_then(Value::as_str) {
        eprintln!("error: {reason}");
        return Ok(ExitCode::FAILURE);
    }
    let report = &last["done"];
    out.print(report, |r| {
        let rows: Vec<Vec<String>> = r["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let masked: Vec<String> = t["masked"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(c, rule)| format!("{c}: {}", s(rule)))
                    .collect();
                let secs = t["seconds"].as_f64().unwrap_or(0.0);
                let n = t["rows"].as_f64().unwrap_or(0.0);
                vec![
                    s(&t["table"]),
                    format!("{n}"),
                    format!("{:.0}", n / secs.max(1e-6)),
                    if masked.is_empty() { "-".into() } else { masked.join(", ") },
                ]
            })
            .collect();
        let leaks = r["leaks"]["columns"].as_array().map_or(0, Vec::len);
        format!(
            "{}refreshed {app} data in {to} from {from} in {:.1}s; leak check: 0 of {leaks} masked columns leaked\n",
            table(&["TABLE", "ROWS", "ROWS/S", "MASKED"], &rows),
            r["seconds"].as_f64().unwrap_or(0.0)
        )
    });
    Ok(ExitCode::SUCCESS)
}

async fn data_check(g: &Global, out: Printer, app: &str, env: &str) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query = [("app", app.to_owned()), ("env", env.to_owned())];
    let check: Value = client.get("/data/check", &query).await?;
    let leaked = check["leaked"].as_u64().unwrap_or(0);
    out.print(&check, |c| {
        let rows: Vec<Vec<String>> = c["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|col| {
                vec![
                    format!("{}.{}", s(&col["table"]), s(&col["column"])),
                    s(&col["rule"]),
                    col["checked"].to_string(),
                    col["leaked"].to_string(),
                ]
            })
            .collect();
        format!(
            "{}{env} compared with {}: {leaked} values equal their source where the rule does not allow it\n",
            table(&["COLUMN", "RULE", "CHECKED", "LEAKED"], &rows),
            s(&c["from"])
        )
    });
    Ok(if leaked == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn drift(g: &Global, out: Printer, app: Option<String>) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query: Vec<(&str, String)> = app.map(|a| ("app", a)).into_iter().collect();
    let reports: Vec<Value> = client.get("/drift", &query).await?;
    let drifted = reports
        .iter()
        .any(|r| r["drift"].as_array().is_some_and(|d| !d.is_empty()));
    out.print(&reports, |reports| {
        let mut text = String::new();
        for r in reports {
            let items = r["drift"].as_array().cloned().unwrap_or_default();
            let verdict = if items.is_empty() {
                "matches its record"
            } else {
                "DRIFTED"
            };
            text.push_str(&format!(
                "{}@{} in {}: {verdict}\n",
                s(&r["app"]),
                s(&r["version"]),
                s(&r["env"])
            ));
            for i in items {
                text.push_str(&format!("  - {}\n", s(&i)));
            }
        }
        if reports.is_empty() {
            text.push_str("nothing is live, so nothing can drift\n");
        } else if drifted {
            text.push_str("heal one: shipgate drift APP --env ENV --heal\n");
        }
        text
    });
    Ok(if drifted {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn drift_heal(g: &Global, out: Printer, app: &str, env: &str) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let promotion: Value = client
        .post("/drift/heal", &json!({ "app": app, "env": env }))
        .await?;
    finish_promotion(&client, out, promotion, true).await
}

/// Requests/s, error rate and latency of the last minute, or `-` without traffic.
fn traffic(t: &Value) -> String {
    let Some(rps) = t["requests_per_second"]
        .as_f64()
        .filter(|_| t["requests"].as_u64().unwrap_or(0) > 0)
    else {
        return "-".to_owned();
    };
    let ms = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}ms"));
    format!(
        "{rps:.1} req/s, {:.1}% 5xx, p50 {} p99 {}",
        t["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
        ms(&t["p50_ms"]),
        ms(&t["p99_ms"])
    )
}

/// The status table: one row per app and environment.
pub fn render_status(apps: &[Value]) -> String {
    let mut rows = Vec::new();
    for a in apps {
        for e in a["environments"].as_array().into_iter().flatten() {
            let live = &e["live"];
            let version = if live.is_null() {
                "-".to_owned()
            } else {
                s(&live["version"])
            };
            let health = match &e["instance"] {
                _ if !e["unhealthy"].is_null() => "CRASH-LOOPING (see shipgate audit)".to_owned(),
                _ if e["drift"].as_array().is_some_and(|d| !d.is_empty()) => {
                    "DRIFTED (see shipgate drift)".to_owned()
                }
                Value::Null if live.is_null() => "-".to_owned(),
                Value::Null => "down".to_owned(),
                i if i["healthy"] == true => {
                    format!("healthy (pid {}, restarts {})", i["pid"], i["restarts"])
                }
                i => format!("unhealthy (restarts {})", i["restarts"]),
            };
            let progress: Vec<String> = e["in_progress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{} {}", s(&p["version"]), s(&p["state"])))
                .collect();
            rows.push(vec![
                s(&a["app"]),
                s(&e["env"]),
                version,
                health,
                s(&e["url"]),
                traffic(&e["traffic"]),
                match &e["standby"] {
                    Value::Null => "-".to_owned(),
                    sb => format!(
                        "{} until {}",
                        s(&sb["version"]),
                        s(&sb["until"]).get(11..19).unwrap_or("?")
                    ),
                },
                if progress.is_empty() {
                    "-".into()
                } else {
                    progress.join(", ")
                },
            ]);
        }
    }
    let mut text = table(
        &[
            "APP",
            "ENV",
            "LIVE",
            "HEALTH",
            "URL",
            "TRAFFIC (1 MIN)",
            "STANDBY",
            "IN PROGRESS",
        ],
        &rows,
    );
    text.push_str(&render_waits(apps));
    text
}

/// What each waiting promotion waits on, and the freezes in force, below the status table.
fn render_waits(apps: &[Value]) -> String {
    let mut waits = String::new();
    let mut freezes: Vec<String> = Vec::new();
    for a in apps {
        for e in a["environments"].as_array().into_iter().flatten() {
            for f in e["frozen"].as_array().into_iter().flatten() {
                let scope = if f["env"].is_null() {
                    "every environment".to_owned()
                } else {
                    s(&f["env"])
                };
                let line = format!(
                    "  {scope} frozen by {} since {}: {}\n",
                    s(&f["by"]),
                    s(&f["since"]),
                    s(&f["reason"])
                );
                if !freezes.contains(&line) {
                    freezes.push(line);
                }
            }
            for p in e["in_progress"].as_array().into_iter().flatten() {
                let Some(list) = p["waiting_on"].as_array().filter(|l| !l.is_empty()) else {
                    continue;
                };
                waits.push_str(&format!(
                    "  {}@{} → {} (promotion {}, requested by {}) waits on:\n",
                    s(&a["app"]),
                    s(&p["version"]),
                    s(&e["env"]),
                    p["id"],
                    s(&p["requested_by"])
                ));
                for w in list {
                    waits.push_str(&format!("    - {}\n", s(&w["message"])));
                }
            }
        }
    }
    let mut text = String::new();
    if !waits.is_empty() {
        text.push_str("\nwaiting:\n");
        text.push_str(&waits);
    }
    if !freezes.is_empty() {
        text.push_str("\nfrozen:\n");
        text.push_str(&freezes.concat());
    }
    text
}

async fn history(
    g: &Global,
    out: Printer,
    app: &str,
    env: Option<String>,
    limit: i64,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let mut query = vec![("app", app.to_owned()), ("limit", limit.to_string())];
    query.extend(env.map(|e| ("env", e)));
    let entries: Vec<Value> = client.get("/history", &query).await?;
    out.print(&entries, |entries| {
        let mut text = String::new();
        for p in entries {
            text.push_str(&format!(
                "#{} {} {}@{} → {}  {}  by {} at {}\n",
                p["id"],
                s(&p["kind"]),
                s(&p["app"]),
                s(&p["version"]),
                s(&p["env"]),
                s(&p["state"]),
                s(&p["requested_by"]),
                s(&p["created_at"])
            ));
            if let Some(reason) = p["reason"].as_str() {
                text.push_str(&format!("    reason: {reason}\n"));
            }
            for w in p["waiting_on"].as_array().into_iter().flatten() {
                text.push_str(&format!("    waits on: {}\n", s(&w["message"])));
            }
            for d in p["decisions"].as_array().into_iter().flatten() {
                let verdict = if d["verdict"] == "approve" {
                    "approved"
                } else {
                    "rejected"
                };
                let comment = d["comment"]
                    .as_str()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "    {verdict} by {} ({}) at {}{comment}\n",
                    s(&d["actor"]),
                    s(&d["role"]),
                    s(&d["at"])
                ));
            }
            for gate in p["gates"].as_array().into_iter().flatten() {
                let mark = if gate["passed"] == true {
                    "passed"
                } else {
                    "FAILED"
                };
                text.push_str(&format!("    {mark}  {}\n", s(&gate["name"])));
                if gate["passed"] != true {
                    for line in s(&gate["output"]).lines() {
                        text.push_str(&format!("        {line}\n"));
                    }
                }
            }
        }
        if text.is_empty() {
            "no promotions yet\n".into()
        } else {
            text
        }
    });
    Ok(ExitCode::SUCCESS)
}

async fn logs(
    g: &Global,
    app: &str,
    env: &str,
    follow: bool,
    lines: usize,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let base = [("app", app.to_owned()), ("env", env.to_owned())];
    let mut query = base.to_vec();
    query.push(("lines", lines.to_string()));
    let mut chunk: Value = client.get("/logs", &query).await?;
    loop {
        print!("{}", s(&chunk["text"]));
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let mut query = base.to_vec();
        query.push(("offset", chunk["offset"].as_u64().unwrap_or(0).to_string()));
        chunk = client.get("/logs", &query).await?;
    }
}

async fn audit(
    g: &Global,
    out: Printer,
    verify: bool,
    app: Option<String>,
    env: Option<String>,
    limit: i64,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    if verify {
        let report: Value = client.get("/audit/verify", &[]).await?;
        let ok = report["problem"].is_null();
        out.print(&report, |r| {
            if ok {
                format!(
                    "audit log intact: {} events, hash chain verified",
                    r["checked"]
                )
            } else {
                format!(
                    "audit log BROKEN after {} intact events: {}",
                    r["checked"],
                    s(&r["problem"])
                )
            }
        });
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    // The newest `limit` events, shown oldest first as a log reads.
    let mut query: Vec<(&str, String)> =
        vec![("limit", limit.to_string()), ("order", "newest".into())];
    query.extend(app.map(|a| ("app", a)));
    query.extend(env.map(|e| ("env", e)));
    let mut events: Vec<Value> = client.get("/events", &query).await?;
    events.reverse();
    out.print(&events, |events| {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    s(&e["id"]),
                    s(&e["at"]),
                    s(&e["actor"]),
                    s(&e["kind"]),
                    s(&e["message"]),
                ]
            })
            .collect();
        table(&["ID", "AT", "ACTOR", "KIND", "WHAT"], &rows)
    });
    Ok(ExitCode::SUCCESS)
}

async fn token(g: &Global, out: Printer, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    match command {
        TokenCommand::Create { name, role, envs } => {
            let body = json!({ "name": name, "role": role, "envs": envs });
            let created: Value = client.post("/tokens", &body).await?;
            out.print(&created, |c| {
                let scope = match c["record"]["envs"].as_array() {
                    Some(envs) if !envs.is_empty() => envs.iter().map(s).collect::<Vec<_>>().join(", "),
                    _ => "every environment".to_owned(),
                };
                format!(
                    "{}\n(token `{}`, role {}, for {scope}; it is shown this once: store it now, for example in SHIPGATE_TOKEN)",
                    s(&c["token"]),
                    s(&c["record"]["name"]),
                    s(&c["record"]["role"])
                )
            });
        }
        TokenCommand::List => {
            let tokens: Vec<Value> = client.get("/tokens", &[]).await?;
            out.print(&tokens, |tokens| {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        let envs: Vec<String> =
                            t["envs"].as_array().into_iter().flatten().map(s).collect();
                        let scope = if envs.is_empty() {
                            "all".to_owned()
                        } else {
                            envs.join(", ")
                        };
                        let state = if t["revoked_at"].is_null() {
                            "active".to_owned()
                        } else {
                            format!("revoked {}", s(&t["revoked_at"]))
                        };
                        vec![
                            s(&t["name"]),
                            s(&t["role"]),
                            scope,
                            s(&t["created_at"]),
                            state,
                        ]
                    })
                    .collect();
                table(&["NAME", "ROLE", "ENVIRONMENTS", "CREATED", "STATE"], &rows)
            });
        }
        TokenCommand::Revoke { name } => {
            let revoked: Value = client.delete(&format!("/tokens/{name}")).await?;
            out.print(&revoked, |t| {
                format!("token `{}` revoked; it no longer works", s(&t["name"]))
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
