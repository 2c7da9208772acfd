//! `shipgate env create|list|extend|delete`: on-demand environments.

use std::process::ExitCode;
use std::time::Duration;

use shipgate_api::answers::OnDemandView;
use shipgate_api::requests::{ExtendRequest, OnDemandRequest};
use shipgate_core::on_demand::OnDemandState;

use crate::cli::{EnvCommand, Global};
use crate::client::connect;
use crate::output::{Printer, table};

/// How often `env create` asks how the environment is coming along.
const POLL: Duration = Duration::from_millis(250);

pub(super) async fn run(g: &Global, out: Printer, command: EnvCommand) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    match command {
        EnvCommand::Create {
            name,
            template,
            releases,
            ttl,
            no_wait,
        } => {
            let req = OnDemandRequest {
                name: name.to_string(),
                template: template.to_string(),
                releases: releases.iter().map(ToString::to_string).collect(),
                ttl,
            };
            let mut env: OnDemandView = client.post("/envs", &req).await?;
            out.progress(&format!(
                "{} is being made from template {} on {}",
                env.record.name, env.record.template, env.url
            ));
            let path = format!("/envs/{name}");
            let mut said = 0;
            while !no_wait && env.record.state == OnDemandState::Creating {
                tokio::time::sleep(POLL).await;
                env = client.get(&path, &[]).await?;
                let lines: Vec<&str> = env
                    .record
                    .outcome
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .collect();
                for line in lines.iter().skip(said) {
                    out.progress(line);
                }
                said = said.max(lines.len());
            }
            let ok = env.record.state == OnDemandState::Ready
                || (no_wait && env.record.state == OnDemandState::Creating);
            out.print(&env, |e| match e.record.state {
                // Each step of its making was said on the way.
                OnDemandState::Ready => format!(
                    "{} is ready: {}{}\nexpires {} unless used (shipgate env extend {} --ttl 24h)\n",
                    e.record.name,
                    e.url,
                    e.named_url.as_ref().map(|u| format!(" (also {u})")).unwrap_or_default(),
                    e.record.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
                    e.record.name
                ),
                OnDemandState::Creating => format!(
                    "{} is being made: {} (shipgate env list shows when it is ready)\n",
                    e.record.name, e.url
                ),
                _ => format!(
                    "{} was made but did not pass: {}\nit stays for a look until it expires {} (shipgate env delete {} removes it now)\n",
                    e.record.name,
                    e.record.outcome.as_deref().unwrap_or("no word why"),
                    e.record.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
                    e.record.name
                ),
            });
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        EnvCommand::List => {
            let envs: Vec<OnDemandView> = client.get("/envs", &[]).await?;
            out.print(&envs, |envs| {
                if envs.is_empty() {
                    return "no on-demand environment (shipgate env create NAME --template T makes one)\n".into();
                }
                let rows: Vec<Vec<String>> = envs
                    .iter()
                    .map(|e| {
                        let live: Vec<String> = e.live.iter().map(ToString::to_string).collect();
                        vec![
                            e.record.name.to_string(),
                            e.record.template.to_string(),
                            e.record.requester.clone(),
                            e.record.state.to_string(),
                            e.named_url.clone().unwrap_or_else(|| e.url.clone()),
                            if live.is_empty() { "-".into() } else { live.join(", ") },
                            format!(
                                "{} ({})",
                                e.record.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
                                left(e)
                            ),
                        ]
                    })
                    .collect();
                table(
                    &["ENV", "TEMPLATE", "REQUESTER", "STATE", "URL", "LIVE", "EXPIRES"],
                    &rows,
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Extend { name, ttl } => {
            let env: OnDemandView = client
                .post(&format!("/envs/{name}/extend"), &ExtendRequest { ttl })
                .await?;
            out.print(&env, |e| {
                format!(
                    "{} expires {} ({}) unless used\n",
                    e.record.name,
                    e.record.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
                    left(e)
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Delete { name } => {
            let env: OnDemandView = client.delete(&format!("/envs/{name}")).await?;
            out.print(&env, |e| {
                format!(
                    "{} deleted: its instances stopped, port {} freed, its data and folders removed\n",
                    e.record.name, e.record.port
                )
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `2d 3h left`, `40m left`, `59s left`, or `due` once its expiry has passed.
fn left(e: &OnDemandView) -> String {
    if e.is_due() {
        "due".into()
    } else {
        format!("{} left", e.time_left())
    }
}
