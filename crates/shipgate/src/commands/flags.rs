//! `shipgate flag set|on|off|show|promote`, `flag changes|approve|reject` (changes waiting for
//! approvals) and `shipgate flag key create|list|revoke`: feature flags per environment and
//! the OFREP client keys that read them.

use std::process::ExitCode;

use shipgate_api::answers::{CreatedFlagKey, FlagPromotion, FlagView};
use shipgate_api::records::{FlagChangeRecord, FlagChangeStatus, FlagKeyRecord};
use shipgate_api::requests::{
    FlagDecisionRequest, FlagKeyRequest, FlagPromoteRequest, SetFlagRequest,
};
use shipgate_core::flag::{FlagState, parse_percent, parse_rule, with_rollout};
use shipgate_core::{AppName, EnvName, Verdict};

use crate::cli::{FlagCommand, FlagKeyCommand, Global};
use crate::client::{Client, connect};
use crate::output::{Printer, table};

pub(super) async fn run(
    g: &Global,
    out: Printer,
    command: FlagCommand,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    match command {
        FlagCommand::Set {
            app,
            flag,
            env,
            rules,
            rollout,
            variant,
        } => {
            let rules = rules
                .iter()
                .map(|r| parse_rule(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let rollout = rollout
                .as_deref()
                .map(parse_percent)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            if rules.is_empty() && rollout.is_none() {
                anyhow::bail!(
                    "give --rule or --rollout (or use shipgate flag on / flag off), for example: shipgate flag set {app} {flag} --env {env} --rollout 10%"
                );
            }
            let state = match rollout {
                Some(percent) => {
                    let declared = declared(&client, &flag, &env).await?;
                    let on = on_variant(&declared, variant.as_deref())?;
                    with_rollout(&declared.default_variant, rules, Some((percent, &on)))
                }
                None => FlagState::Rules { rules },
            };
            set(&client, &out, app, flag, env, state).await
        }
        FlagCommand::On {
            app,
            flag,
            env,
            variant,
        } => {
            let declared = declared(&client, &flag, &env).await?;
            let variant = on_variant(&declared, variant.as_deref())?;
            set(&client, &out, app, flag, env, FlagState::On { variant }).await
        }
        FlagCommand::Off { app, flag, env } => {
            set(&client, &out, app, flag, env, FlagState::Off).await
        }
        FlagCommand::Show { flag, env } => {
            let query: Vec<(&str, String)> = env.iter().map(|e| ("env", e.to_string())).collect();
            let mut flags: Vec<FlagView> = client.get("/flags", &query).await?;
            if let Some(f) = &flag {
                flags.retain(|v| &v.flag == f);
                if flags.is_empty() {
                    anyhow::bail!("no app declares flag `{f}` (shipgate flag show lists them)");
                }
            }
            out.print(&flags, |flags| {
                if flags.is_empty() {
                    return "no flag is declared ([apps.APP.flags.KEY] in the config declares one)\n".into();
                }
                let rows: Vec<Vec<String>> = flags
                    .iter()
                    .map(|v| {
                        vec![
                            v.app.to_string(),
                            v.flag.clone(),
                            v.kind.as_str().to_owned(),
                            v.env.to_string(),
                            v.summary.clone(),
                        ]
                    })
                    .collect();
                table(&["APP", "FLAG", "TYPE", "ENV", "STATE"], &rows)
            });
            Ok(ExitCode::SUCCESS)
        }
        FlagCommand::Promote {
            app,
            from,
            to,
            flag,
            dry_run,
        } => {
            let mut req = FlagPromoteRequest {
                app: app.to_string(),
                from: from.to_string(),
                to: to.to_string(),
                flag,
                dry_run: true,
            };
            let seen: FlagPromotion = client.post("/flags/promote", &req).await?;
            if seen.changes.is_empty() || dry_run {
                out.print(&seen, describe);
                return Ok(ExitCode::SUCCESS);
            }
            out.progress(describe(&seen).trim_end());
            req.dry_run = false;
            let done: FlagPromotion = client.post("/flags/promote", &req).await?;
            out.print(&done, describe);
            Ok(ExitCode::SUCCESS)
        }
        FlagCommand::Changes { env, all } => {
            let mut query: Vec<(&str, String)> =
                env.iter().map(|e| ("env", e.to_string())).collect();
            if all {
                query.push(("all", "true".into()));
            }
            let changes: Vec<FlagChangeRecord> = client.get("/flag-changes", &query).await?;
            out.print(&changes, |changes| {
                if changes.is_empty() {
                    return "no flag change waits for approvals\n".into();
                }
                let rows: Vec<Vec<String>> = changes
                    .iter()
                    .map(|c| {
                        vec![
                            format!("#{}", c.id),
                            c.app.to_string(),
                            c.env.to_string(),
                            c.status.as_str().to_owned(),
                            c.requested_by.clone(),
                            decided(c),
                            changed(c),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "APP",
                        "ENV",
                        "STATUS",
                        "ASKED BY",
                        "DECISIONS",
                        "CHANGE",
                    ],
                    &rows,
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        FlagCommand::Approve { id, comment } => {
            decide(&client, &out, id, Verdict::Approve, comment).await
        }
        FlagCommand::Reject { id, comment } => {
            decide(&client, &out, id, Verdict::Reject, Some(comment)).await
        }
        FlagCommand::Key(FlagKeyCommand::Create { name, env }) => {
            let req = FlagKeyRequest {
                name,
                env: env.to_string(),
            };
            let created: CreatedFlagKey = client.post("/flag-keys", &req).await?;
            out.print(&created, |c| {
                format!(
                    "{}\n(flag key `{}` for {}: send it as X-API-Key to /ofrep/v1/; it is shown this once)\n",
                    c.key, c.record.name, c.record.env
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        FlagCommand::Key(FlagKeyCommand::List) => {
            let keys: Vec<FlagKeyRecord> = client.get("/flag-keys", &[]).await?;
            out.print(&keys, |keys| {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.name.clone(),
                            k.env.to_string(),
                            k.created_by.clone(),
                            k.created_at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
                            k.revoked_at
                                .map(|r| format!("revoked {}", r.strftime("%Y-%m-%d %H:%M UTC")))
                                .unwrap_or_else(|| "active".into()),
                        ]
                    })
                    .collect();
                table(&["NAME", "ENV", "BY", "CREATED", "STATE"], &rows)
            });
            Ok(ExitCode::SUCCESS)
        }
        FlagCommand::Key(FlagKeyCommand::Revoke { name }) => {
            let key: FlagKeyRecord = client.delete(&format!("/flag-keys/{name}")).await?;
            out.print(&key, |k| {
                format!("flag key `{}` for {} revoked\n", k.name, k.env)
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe(p: &FlagPromotion) -> String {
    if p.changes.is_empty() {
        return format!(
            "{} has {}'s flag states of {} already\n",
            p.to, p.from, p.app
        );
    }
    let lines: Vec<String> = p
        .changes
        .iter()
        .map(|c| format!("  {}: {} -> {}\n", c.flag, c.before, c.after))
        .collect();
    if let Some(change) = &p.waiting {
        return waits(change);
    }
    let head = if p.applied {
        format!("{} now has {}'s flag states of {}:", p.to, p.from, p.app)
    } else {
        format!(
            "flags of {} that differ between {} and {}:",
            p.app, p.from, p.to
        )
    };
    format!("{head}\n{}", lines.concat())
}

/// The flag as `env` has it, to learn its type and variants.
async fn declared(client: &Client, flag: &str, env: &EnvName) -> anyhow::Result<FlagView> {
    let flags: Vec<FlagView> = client.get("/flags", &[("env", env.to_string())]).await?;
    flags.into_iter().find(|v| v.flag == flag).ok_or_else(|| {
        anyhow::anyhow!("no app declares flag `{flag}` (shipgate flag show lists them)")
    })
}

/// The variant to turn on: the one named, or the flag's only one besides its default.
fn on_variant(flag: &FlagView, named: Option<&str>) -> anyhow::Result<String> {
    if let Some(v) = named {
        return Ok(v.to_owned());
    }
    let variants: Vec<&String> = flag
        .variants
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    if variants.iter().any(|v| *v == "on") {
        return Ok("on".into());
    }
    let others: Vec<&&String> = variants
        .iter()
        .filter(|v| ***v != flag.default_variant)
        .collect();
    match others.as_slice() {
        [only] => Ok((**only).clone()),
        _ => anyhow::bail!(
            "flag `{}` has several variants besides its default ({}); name one with --variant",
            flag.flag,
            others
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn set(
    client: &Client,
    out: &Printer,
    app: AppName,
    flag: String,
    env: EnvName,
    state: FlagState,
) -> anyhow::Result<ExitCode> {
    let req = SetFlagRequest {
        app: app.to_string(),
        flag,
        env: env.to_string(),
        state,
    };
    match client.post("/flags", &req).await? {
        SetAnswer::Waiting(change) => out.print(&change, waits),
        SetAnswer::Set(view) => out.print(&view, |v| {
            format!("{}/{} in {}: {}\n", v.app, v.flag, v.env, v.summary)
        }),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `POST /flags` answers: the flag as it is now, or the change waiting for approvals.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum SetAnswer {
    Waiting(FlagChangeRecord),
    Set(FlagView),
}

/// A change that waits, and what to run next.
fn waits(c: &FlagChangeRecord) -> String {
    format!(
        "flag change #{id} of {app} in {env} waits for approvals ({change}): shipgate flag approve {id}\n",
        id = c.id,
        app = c.app,
        env = c.env,
        change = changed(c)
    )
}

/// `flag: before -> after; ...`.
fn changed(c: &FlagChangeRecord) -> String {
    c.changes
        .iter()
        .map(|f| format!("{}: {} -> {}", f.flag, f.before, f.after))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `dana approved, lee rejected: too early`.
fn decided(c: &FlagChangeRecord) -> String {
    if c.decisions.is_empty() {
        return "-".into();
    }
    c.decisions
        .iter()
        .map(|d| match &d.comment {
            Some(why) => format!("{} {}: {why}", d.actor, d.verdict.past()),
            None => format!("{} {}", d.actor, d.verdict.past()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn decide(
    client: &Client,
    out: &Printer,
    id: i64,
    verdict: Verdict,
    comment: Option<String>,
) -> anyhow::Result<ExitCode> {
    let req = FlagDecisionRequest { verdict, comment };
    let change: FlagChangeRecord = client
        .post(&format!("/flag-changes/{id}/decisions"), &req)
        .await?;
    out.print(&change, |c| match c.status {
        FlagChangeStatus::Applied => format!(
            "flag change #{} approved and applied in {}: {}\n",
            c.id,
            c.env,
            changed(c)
        ),
        FlagChangeStatus::Rejected => {
            format!("flag change #{} rejected; it is not applied\n", c.id)
        }
        _ => format!(
            "flag change #{} {}; it still waits for approvals ({})\n",
            c.id,
            verdict.past(),
            decided(c)
        ),
    });
    Ok(ExitCode::SUCCESS)
}
