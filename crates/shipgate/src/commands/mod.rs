//! One function per command, one module per noun of the command line. Every answer of the
//! server is read through the wire types of `shipgate-api`.

mod audit;
mod backup;
mod canary;
mod chaos;
mod data;
mod flags;
mod install;
mod login;
mod notify;
mod on_demand;
mod parity;
mod promotion;
mod release;
mod signoff;
mod status;
mod store;

pub use release::{Source, upload};
pub use status::render_status;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use shipgate_api::requests::{DecisionRequest, PromoteRequest};
use shipgate_core::Verdict;

use crate::cli::{Cli, Command, DataCommand, Global, ReleaseCommand};
use crate::config_file;
use crate::output::Printer;

use audit::{add_host, audit, hosts, logs, remove_host, token};
use data::{data_check, data_refresh};
use parity::{diff, drift, drift_heal};
use promotion::{decide, freeze, promote, redeploy, rollback};
use release::{release_create, release_list};
use status::{history, status};

/// Runs a command; `Ok(FAILURE)` is a refusal already explained to the user.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Printer::new(cli.global.output);
    let g = &cli.global;
    match cli.command {
        Command::Init => init(&g.config),
        Command::Validate => validate(&g.config, out),
        Command::Server => server(&g.config).await,
        Command::Reload => reload(g, out).await,
        Command::Gc { dry_run } => gc(g, out, dry_run).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, "shipgate", &mut text);
            Ok(print_all(&text))
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut text)
                .context("writing the manual page")?;
            Ok(print_all(&text))
        }
        Command::Demo { exit } => crate::demo::run(exit, out).await,
        Command::Store(crate::cli::StoreCommand::Copy {
            from,
            to,
            artifacts,
        }) => store::copy(out, &from, &to, artifacts).await,
        Command::Release(ReleaseCommand::Create {
            app,
            version,
            artifact,
            image,
            base,
            commit,
            commit_time,
            notes,
        }) => {
            let source = release::Source {
                commit,
                commit_time,
                notes,
            };
            let from = match (artifact, image, base) {
                (_, Some(image), _) => release::From::Image(image),
                (Some(artifact), None, Some(base)) => release::From::OnBase { artifact, base },
                (Some(artifact), None, None) => release::From::Artifact(artifact),
                (None, None, _) => anyhow::bail!("give --artifact DIR or --image REF"),
            };
            release_create(g, out, app.as_str(), version.as_str(), &from, source).await
        }
        Command::Release(ReleaseCommand::Show { release }) => {
            release::release_show(g, out, &release).await
        }
        Command::Release(ReleaseCommand::List { app }) => {
            release_list(g, out, app.map(|a| a.to_string())).await
        }
        Command::Promote {
            release,
            to,
            wait,
            override_reason,
            hotfix,
            reason,
        } => {
            let body = PromoteRequest {
                release: release.to_string(),
                env: to.to_string(),
                override_reason,
                hotfix: reason.filter(|_| hotfix),
            };
            promote(g, out, body, wait).await
        }
        Command::Approve {
            release,
            env,
            comment,
        } => decide(g, out, decision(release, env, Verdict::Approve, comment)).await,
        Command::Reject {
            release,
            env,
            comment,
        } => {
            decide(
                g,
                out,
                decision(release, env, Verdict::Reject, Some(comment)),
            )
            .await
        }
        Command::Freeze {
            env,
            all: _,
            reason,
        } => freeze(g, out, env.map(|e| e.to_string()), Some(reason)).await,
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
        Command::Redeploy { app, env, wait } => {
            redeploy(g, out, app.as_str(), env.as_str(), wait).await
        }
        Command::Status { app } => status(g, out, app.map(|a| a.to_string())).await,
        Command::Login { no_browser } => login::login(g, out, !no_browser).await,
        Command::Data(DataCommand::Refresh { app, from, to }) => {
            data_refresh(g, out, app.as_str(), from.as_str(), to.as_str()).await
        }
        Command::Data(DataCommand::Check { app, env }) => {
            data_check(g, out, app.as_str(), env.as_str()).await
        }
        Command::Diff {
            app,
            env_a,
            env_b,
            strict,
        } => diff(g, out, app.as_str(), env_a.as_str(), env_b.as_str(), strict).await,
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
            host,
        } => logs(g, app.as_str(), env.as_str(), follow, lines, host).await,
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
        Command::Env(command) => on_demand::run(g, out, command).await,
        Command::Flag(command) => flags::run(g, out, command).await,
        Command::Chaos(command) => chaos::run(g, out, command).await,
        Command::Canary(command) => canary::run(g, out, command).await,
        Command::Signoff(args) => signoff::run(g, out, args).await,
        Command::Backup(command) => backup::run(g, out, command).await,
        Command::Load(command) => load(g, out, command).await,
        Command::Secret(command) => secret(g, out, command).await,
        Command::Notify(command) => notify::run(g, out, command).await,
        Command::Dora { app, days } => notify::dora(g, out, app, days).await,
        Command::Host(crate::cli::HostCommand::List) => hosts(g, out).await,
        Command::Host(crate::cli::HostCommand::Add { name }) => add_host(g, out, &name).await,
        Command::Host(crate::cli::HostCommand::Remove { name }) => remove_host(g, out, &name).await,
        Command::Host(crate::cli::HostCommand::Install {
            name,
            ssh,
            identity,
            port,
            dir,
            ssh_options,
        }) => {
            let via = install::Ssh {
                target: ssh,
                identity,
                port,
                options: ssh_options,
            };
            install::install(g, out, &name, &via, &dir).await
        }
        Command::SampleApp { port } => crate::sample::serve(port).await,
        Command::Agent {
            data_dir,
            stop,
            join,
            name,
            ca_fingerprint,
        } => {
            if let (Some(token), Some(name)) = (join, &name) {
                let data_dir = data_dir.unwrap_or_else(|| "/var/lib/shipgate-agent".into());
                let ca = ca_fingerprint.as_deref();
                return join_and_run(g, &data_dir, &token, name, ca).await;
            }
            let data_dir = match data_dir {
                Some(d) => d,
                None if !g.config.exists() || name.is_some() => "/var/lib/shipgate-agent".into(),
                None => match config_file::load(&g.config)? {
                    Ok((c, _)) => c.server.data_dir,
                    Err(invalid) => {
                        eprint!("{}", invalid.0);
                        eprintln!("error: give --data-dir, or fix the config");
                        return Ok(ExitCode::FAILURE);
                    }
                },
            };
            if stop {
                stop_agent(&data_dir).await
            } else if let Some(name) = name {
                // The join command again, without the token: a restart of that host's agent.
                match joined_as(&data_dir, &name, g.server.as_deref()) {
                    Ok(()) => agent(&data_dir).await,
                    Err(why) => {
                        eprintln!("error: {why}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            } else {
                agent(&data_dir).await
            }
        }
        Command::SampleSmoke {
            url,
            expect_version,
        } => crate::sample::smoke(&url, &expect_version).await,
    }
    .or_else(|e| refusal_to_exit_code(e, out))
}

/// The query of an optional app filter.
fn app_query(app: Option<String>) -> Vec<(&'static str, String)> {
    app.map(|a| ("app", a)).into_iter().collect()
}

/// What `approve` and `reject` send.
fn decision(
    release: shipgate_core::ReleaseRef,
    env: shipgate_core::EnvName,
    verdict: Verdict,
    comment: Option<String>,
) -> DecisionRequest {
    DecisionRequest {
        release: release.to_string(),
        env: env.to_string(),
        verdict,
        comment,
    }
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
    // The data dir holds the admin token and the database: never committed.
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    let ignore = folder.map_or_else(
        || Path::new(".gitignore").to_path_buf(),
        |f| f.join(".gitignore"),
    );
    let listed = std::fs::read_to_string(&ignore).unwrap_or_default();
    if !listed
        .lines()
        .any(|l| matches!(l.trim(), ".shipgate" | ".shipgate/" | "/.shipgate/"))
    {
        let mut text = listed.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("# shipgate's data dir: its database and the admin token\n.shipgate/\n");
        std::fs::write(&ignore, text).with_context(|| format!("writing {}", ignore.display()))?;
        println!(
            "added .shipgate/ to {} (it holds the admin token)",
            ignore.display()
        );
    }
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

/// Writes `bytes` to stdout; a reader that stops early (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

async fn reload(g: &Global, out: Printer) -> anyhow::Result<ExitCode> {
    let client = crate::client::connect(g)?;
    let answer: shipgate_api::answers::Reloaded = client.post("/reload", &json!({})).await?;
    out.print(&answer, |a| {
        if a.changes.is_empty() {
            "the config file says what runs already: nothing to reload\n".to_owned()
        } else {
            let mut text = "reloading; the environments keep serving:\n".to_owned();
            for c in &a.changes {
                text.push_str(&format!("  {c}\n"));
            }
            text
        }
    });
    Ok(ExitCode::SUCCESS)
}

async fn gc(g: &Global, out: Printer, dry_run: bool) -> anyhow::Result<ExitCode> {
    let client = crate::client::connect(g)?;
    let r: shipgate_api::answers::GcReport =
        client.post("/gc", &json!({ "dry_run": dry_run })).await?;
    out.print(&r, |r| {
        let (goes, went) = if r.dry_run {
            ("would go", "would be freed")
        } else {
            ("went", "freed")
        };
        let mut text = String::new();
        for p in &r.releases {
            text.push_str(&format!(
                "{goes}: {}@{} ({}, {})\n",
                p.app,
                p.version,
                p.digest.short(),
                shipgate_core::ByteSize(p.bytes)
            ));
        }
        for l in &r.logs {
            text.push_str(&format!(
                "{goes}: {} ({})\n",
                l.path,
                shipgate_core::ByteSize(l.bytes)
            ));
        }
        for o in &r.orphans {
            text.push_str(&format!(
                "{goes}: artifact {} ({}), which no release refers to\n",
                o.digest.short(),
                shipgate_core::ByteSize(o.bytes)
            ));
        }
        for k in &r.kept {
            text.push_str(&format!(
                "kept: {}@{} ({})\n",
                k.app,
                k.version,
                k.why.join(", ")
            ));
        }
        if !r.orphans.is_empty() {
            let (n, s) = (r.orphans.len(), if r.orphans.len() == 1 { "" } else { "s" });
            let removed = if r.dry_run { "would remove" } else { "removed" };
            text.push_str(&format!(
                "{removed} {n} artifact{s} that no release refers to\n"
            ));
        }
        if r.releases.is_empty() && r.logs.is_empty() && r.orphans.is_empty() {
            text.push_str("nothing to remove: retention keeps everything on disk\n");
        } else {
            text.push_str(&format!(
                "{} {went}\n",
                shipgate_core::ByteSize(r.freed_bytes)
            ));
        }
        text
    });
    Ok(ExitCode::SUCCESS)
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
    init_logging();
    let file = std::path::absolute(path)?;
    let loader: shipgate_server::reload::Loader = {
        let file = file.clone();
        Arc::new(move || match config_file::load(&file) {
            Ok(Ok((c, _))) => Ok(c),
            Ok(Err(invalid)) => Err(invalid.0),
            Err(e) => Err(format!("{e:#}")),
        })
    };
    let data_dir = config.server.data_dir.clone();
    let server = match shipgate_server::Server::start_from_file(
        Arc::new(config),
        loader,
        file,
        shutdown_signal(),
    )
    .await
    {
        Ok(server) => server,
        Err(e) if e.is::<shipgate_server::StoppedStandingBy>() => {
            eprintln!("shipgate stopped; it stood by and never led");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    let dashboard = {
        let mut addr = server.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    };
    eprintln!(
        "shipgate serving its API and dashboard on http://{dashboard} (admin token in {}); reload the config with `shipgate reload` or SIGHUP, or just save it",
        data_dir.join(shipgate_server::ADMIN_TOKEN_FILE).display()
    );
    let on_hangup = server.reload_handle();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match on_hangup.reload().await {
                Ok(shipgate_server::reload::Reload::Unchanged) => {
                    tracing::info!("SIGHUP: the config file is unchanged")
                }
                Ok(shipgate_server::reload::Reload::Applying(_)) => return,
                Err(shipgate_server::reload::NotReloaded::Invalid(problems)) => tracing::error!(
                    "SIGHUP: the config file is invalid; the running config stays:\n{problems}"
                ),
                Err(shipgate_server::reload::NotReloaded::Refused(why)) => {
                    tracing::warn!("SIGHUP: not reloaded: {why}")
                }
            }
        }
    });
    let ended = server.wait().await?;
    if ended == shipgate_server::Ended::Reload {
        // The same process, started again on the new file: the agent kept serving meanwhile.
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("locating this shipgate binary")?;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec();
        anyhow::bail!("could not start again on the new config: {err}");
    }
    eprintln!("shipgate stopped");
    Ok(ExitCode::SUCCESS)
}

/// Joins the server named by `--server` as host `name` with its one-time `token`, keeps the
/// certificate it gets in `data_dir`, and runs the agent.
async fn join_and_run(
    g: &Global,
    data_dir: &Path,
    token: &str,
    name: &str,
    ca_fingerprint: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let Some(server) = g.server.clone() else {
        eprintln!("error: joining needs the server's API address: add --server http://HOST:PORT");
        return Ok(ExitCode::FAILURE);
    };
    std::fs::create_dir_all(data_dir).with_context(|| format!("making {}", data_dir.display()))?;
    let (key, public_key) = shipgate_agent::tls::Identity::new_key().map_err(anyhow::Error::msg)?;
    // Joined through whichever server leads (the others stand by with 503); every server of
    // the list is kept, so the agent later dials whichever leads then.
    let mut answer = None;
    for base in server.split(',').map(|b| b.trim().trim_end_matches('/')) {
        let url = format!("{base}/api/v1/hosts/join");
        let sent = reqwest::Client::new()
            .post(&url)
            .json(&shipgate_api::requests::JoinRequest {
                name: name.to_owned(),
                token: token.to_owned(),
                public_key: public_key.clone(),
            })
            .send()
            .await;
        match sent {
            Ok(a) if a.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                answer = Some(a);
                break;
            }
            Ok(_) => tracing::info!("{base} stands by; trying the next server"),
            Err(e) => tracing::info!("POST {url}: {e}; trying the next server"),
        }
    }
    let answer = answer.with_context(|| {
        format!("no server of {server} took the join (none answered, or all stand by)")
    })?;
    if !answer.status().is_success() {
        let status = answer.status();
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        eprintln!(
            "error: the server refused the join ({status}): {}",
            body["detail"].as_str().unwrap_or("no detail")
        );
        return Ok(ExitCode::FAILURE);
    }
    let joined: shipgate_api::answers::Joined = answer.json().await.context("the join answer")?;
    let sent = shipgate_agent::tls::pem_fingerprint(&joined.ca).map_err(anyhow::Error::msg)?;
    match ca_fingerprint {
        Some(expected) if !expected.trim().eq_ignore_ascii_case(&sent) => {
            eprintln!(
                "error: the server's CA has fingerprint {sent}, not {expected}: something between this host and {server} answered the join; nothing was saved"
            );
            return Ok(ExitCode::FAILURE);
        }
        Some(_) => {}
        None => eprintln!(
            "warning: the server's CA ({sent}) was not checked; pass --ca-fingerprint, as `shipgate host add` prints it"
        ),
    }
    shipgate_agent::tls::Identity::save(
        data_dir,
        name,
        &server,
        &key,
        &joined.certificate,
        &joined.ca,
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "joined {server} as host {name}; the certificate is kept in {} (start again with: shipgate agent --data-dir {})",
        data_dir.display(),
        data_dir.display()
    );
    agent(data_dir).await
}

/// Whether the agent of `data_dir` joined as host `name` of `server` (when given); why not.
fn joined_as(data_dir: &Path, name: &str, server: Option<&str>) -> Result<(), String> {
    let identity = shipgate_agent::tls::Identity::load(data_dir)?.ok_or_else(|| {
        format!(
            "{} holds no host that joined a server: join first with the command `shipgate host add {name}` printed (it has --join TOKEN), or give the --data-dir it joined with",
            data_dir.display()
        )
    })?;
    if identity.name != name {
        return Err(format!(
            "the agent of {} joined as host {}, not {name}: start it with --name {} (or join {name} with its own --data-dir)",
            data_dir.display(),
            identity.name,
            identity.name
        ));
    }
    let servers = |list: &str| -> Vec<String> {
        let mut all: Vec<String> = list
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .collect();
        all.sort();
        all
    };
    if let Some(server) = server
        && servers(server) != servers(&identity.server)
    {
        return Err(format!(
            "host {name} joined {}, not {server}: to move it, remove it there (shipgate host remove {name}) and join the new server with a token of its own into an empty --data-dir",
            identity.server
        ));
    }
    Ok(())
}

/// Logs of the long-running commands (server, agent) to stderr: `RUST_LOG`, or info; colour
/// only on a terminal.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn agent(data_dir: &Path) -> anyhow::Result<ExitCode> {
    init_logging();
    let identity = match shipgate_agent::tls::Identity::load(data_dir) {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(id) = &identity {
        eprintln!("agent of host {} for the server {}", id.name, id.server);
    }
    // What it runs is kept, so an agent that takes over after this one dies adopts it.
    let kept = shipgate_agent::local::AgentFiles::of(data_dir).kept;
    let driver = Arc::new(shipgate_deploy::ProcessDriver::keeping(kept));
    match shipgate_agent::local::run(data_dir, driver, identity).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Sends SIGTERM to the agent of `data_dir` and waits until it has stopped.
async fn stop_agent(data_dir: &Path) -> anyhow::Result<ExitCode> {
    eprintln!(
        "stopping the agent of {}: its routers, then its instances",
        data_dir.display()
    );
    match shipgate_agent::local::stop(data_dir).await {
        Ok(pid) => {
            eprintln!("the agent stopped (pid {pid})");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("error: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
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

/// `shipgate load run|baseline`: exits 1 unless the run passed.
async fn load(
    g: &Global,
    out: Printer,
    command: crate::cli::LoadCommand,
) -> anyhow::Result<ExitCode> {
    use crate::cli::LoadCommand;
    let client = crate::client::connect(g)?;
    let body = match command {
        LoadCommand::Run {
            app,
            env,
            rate,
            duration,
        } => shipgate_api::requests::LoadRequestBody {
            app: app.to_string(),
            env: env.to_string(),
            rate: rate.map(f64::from),
            duration,
            baseline: false,
        },
        LoadCommand::Baseline { app, env } => shipgate_api::requests::LoadRequestBody {
            app: app.to_string(),
            env: env.to_string(),
            rate: None,
            duration: None,
            baseline: true,
        },
    };
    let answer: shipgate_api::answers::LoadReport = client.post("/load", &body).await?;
    out.print(&answer, |a| a.report.clone());
    Ok(match answer.run.verdict {
        shipgate_core::load::LoadVerdict::Pass(_) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// `shipgate secret set|list|rm|recipient`: values only from stdin, never shown.
async fn secret(
    g: &Global,
    out: Printer,
    command: crate::cli::SecretCommand,
) -> anyhow::Result<ExitCode> {
    use crate::cli::SecretCommand;
    use shipgate_api::answers::{SecretInfo, SecretSet, SecretsRecipient};
    let client = crate::client::connect(g)?;
    match command {
        SecretCommand::Set { env, name, deploy } => {
            use std::io::{IsTerminal, Read};
            if std::io::stdin().is_terminal() {
                eprintln!("type the value of {name}, then Enter and Ctrl-D:");
            }
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the value from stdin")?;
            if let Some(v) = value.strip_suffix('\n') {
                value = v.strip_suffix('\r').unwrap_or(v).to_owned();
            }
            if value.is_empty() {
                anyhow::bail!(
                    "no value on stdin: send it there, e.g. `printf %s \"$VALUE\" | shipgate secret set {env} {name}`"
                );
            }
            let body = shipgate_api::requests::SecretSetRequest { value, deploy };
            let set: SecretSet = client.put(&format!("/secrets/{env}/{name}"), &body).await?;
            out.print(&set, |s| {
                let mut text = format!(
                    "secret {} of {} is now version {}",
                    s.secret.name, s.secret.env, s.secret.version
                );
                if s.secret.used_by.is_empty() {
                    text.push_str(&format!(
                        "; no variable of {} uses it yet (vars.NAME = {{ secret = \"{}\" }})",
                        s.secret.env, s.secret.name
                    ));
                } else if s.promotions.is_empty() {
                    text.push_str(&format!(
                        "; it reaches {} at the next deploy (shipgate redeploy APP --env {}, or set it with --deploy)",
                        s.secret.used_by.join(", "),
                        s.secret.env
                    ));
                }
                for p in &s.promotions {
                    text.push_str(&format!(
                        "\npromotion #{} redeploys {}@{} into {} (shipgate status {})",
                        p.id, p.app, p.version, p.env, p.app
                    ));
                }
                text
            });
        }
        SecretCommand::List { env } => {
            let list: Vec<SecretInfo> = client.get(&format!("/secrets/{env}"), &[]).await?;
            out.print(&list, |list| {
                if list.is_empty() {
                    return format!("{env} has no secrets (shipgate secret set {env} NAME)");
                }
                list.iter()
                    .map(|s| {
                        let used = if s.used_by.is_empty() {
                            "unused".to_owned()
                        } else {
                            format!("used by {}", s.used_by.join(", "))
                        };
                        format!(
                            "{}  version {}  set by {} at {} ({})  {used}",
                            s.name, s.version, s.set_by, s.set_at, s.source
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SecretCommand::Rm { env, name } => {
            let removed: SecretInfo = client.delete(&format!("/secrets/{env}/{name}")).await?;
            out.print(&removed, |s| {
                format!(
                    "secret {} of {} removed (version {}); running instances keep it until their next deploy",
                    s.name, s.env, s.version
                )
            });
        }
        SecretCommand::Recipient => {
            let r: SecretsRecipient = client.get("/secrets-recipient", &[]).await?;
            out.print(&r, |r| r.recipient.clone());
        }
    }
    Ok(ExitCode::SUCCESS)
}
