//! `shipgate backup create|list|show|restore`: backups of an environment's data, each proven by
//! a restore drill.

use std::process::ExitCode;

use shipgate_api::records::BackupRecord;
use shipgate_api::requests::{BackupRequest, RestoreRequest};

use crate::cli::{BackupCommand, Global};
use crate::client::connect;
use crate::output::{Printer, table};

pub(super) async fn run(
    g: &Global,
    out: Printer,
    command: BackupCommand,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    match command {
        BackupCommand::Create { app, env } => {
            let body = BackupRequest {
                app: app.to_string(),
                env: env.to_string(),
            };
            let b: BackupRecord = client.post("/backups", &body).await?;
            out.print(&b, describe);
            if b.state != "restorable" {
                return Ok(ExitCode::FAILURE);
            }
        }
        BackupCommand::List { app, env } => {
            let mut query = vec![("app", app.to_string())];
            query.extend(env.map(|e| ("env", e.to_string())));
            let all: Vec<BackupRecord> = client.get("/backups", &query).await?;
            out.print(&all, |all| {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|b| {
                        vec![
                            b.id.to_string(),
                            b.env.to_string(),
                            if b.pruned_at.is_some() {
                                format!("{} (pruned)", b.state)
                            } else {
                                b.state.clone()
                            },
                            b.created_at.to_string(),
                            b.size.map_or("-".into(), |s| {
                                shipgate_core::ByteSize(s as u64).to_string()
                            }),
                            b.counts.values().sum::<i64>().to_string(),
                            b.reason.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "ENV", "STATE", "TAKEN", "SIZE", "ROWS", "REASON"],
                    &rows,
                )
            });
        }
        BackupCommand::Drill { id } => {
            let b: BackupRecord = client
                .post(&format!("/backups/{id}/drill"), &serde_json::json!({}))
                .await?;
            out.print(&b, describe);
            if b.state != "restorable" {
                return Ok(ExitCode::FAILURE);
            }
        }
        BackupCommand::Show { id } => {
            let b: BackupRecord = client.get(&format!("/backups/{id}"), &[]).await?;
            out.print(&b, describe);
        }
        BackupCommand::Restore {
            app,
            env,
            id,
            reason,
        } => {
            let id = match id {
                Some(id) => id,
                None => {
                    let query = [("app", app.to_string()), ("env", env.to_string())];
                    let all: Vec<BackupRecord> = client.get("/backups", &query).await?;
                    all.iter()
                        .find(|b| b.state == "restorable" && b.pruned_at.is_none())
                        .map(|b| b.id)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "{app} has no restorable backup in {env} (take one: shipgate backup create {app} --env {env})"
                            )
                        })?
                }
            };
            let b: BackupRecord = client
                .post(
                    &format!("/backups/{id}/restore"),
                    &RestoreRequest { reason },
                )
                .await?;
            out.print(&b, |b| {
                format!(
                    "restored backup {} into {} {}: its {} rows as at {}\n",
                    b.id,
                    b.app,
                    b.env,
                    b.counts.values().sum::<i64>(),
                    b.created_at
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(b: &BackupRecord) -> String {
    let mut text = format!(
        "backup {} of {} in {}: {}\n  reason: {}\n  source: {} ({})\n  taken: {}",
        b.id, b.app, b.env, b.state, b.reason, b.source, b.kind, b.created_at
    );
    if let (Some(size), Some(took)) = (b.size, b.duration_ms) {
        text.push_str(&format!(
            " in {took} ms, {}",
            shipgate_core::ByteSize(size as u64)
        ));
    }
    if let Some(c) = &b.checksum {
        text.push_str(&format!("\n  checksum: sha256:{c}"));
    }
    if let Some(e) = &b.error {
        text.push_str(&format!("\n  why: {e}"));
    }
    if let Some(p) = b.pruned_at {
        text.push_str(&format!("\n  pruned by retention at {p}"));
    }
    text.push('\n');
    let drilled = b
        .drill
        .as_ref()
        .and_then(|d| d["tables"].as_array().cloned());
    let rows: Vec<Vec<String>> = b
        .counts
        .iter()
        .map(|(t, n)| {
            let restored = drilled
                .as_ref()
                .and_then(|d| d.iter().find(|x| x["table"] == t.as_str()))
                .map_or("-".to_owned(), |x| {
                    x["restored"]
                        .as_i64()
                        .map_or("missing".into(), |r| r.to_string())
                });
            vec![t.clone(), n.to_string(), restored]
        })
        .collect();
    text.push_str(&table(
        &["TABLE", "ROWS AT SNAPSHOT", "RESTORED IN DRILL"],
        &rows,
    ));
    if let Some(queries) = b.drill.as_ref().and_then(|d| d["queries"].as_array()) {
        for q in queries {
            text.push_str(&format!(
                "verify `{}`: {}\n",
                q["query"].as_str().unwrap_or(""),
                q["answer"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| q["error"].as_str().map(|e| format!("failed: {e}")))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(ms) = b.drill.as_ref().and_then(|d| d["took_ms"].as_u64()) {
        text.push_str(&format!("drill took {ms} ms\n"));
    }
    text
}
