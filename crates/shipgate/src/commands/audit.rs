//! `shipgate logs`, `audit`, `token` and `host`.

use std::process::ExitCode;

use shipgate_api::answers::{CreatedHost, CreatedToken, LogChunk};
use shipgate_api::records::{AuditReport, Event, HostRecord, TokenRecord};
use shipgate_api::requests::{HostRequest, TokenRequest};
use shipgate_api::status::HostView;

use crate::cli::{Global, TokenCommand};
use crate::client::connect;
use crate::output::{Printer, table};

/// Adds host `name`; the answer holds its one-time join token.
pub(super) async fn added_host(
    client: &crate::client::Client,
    name: &str,
) -> anyhow::Result<CreatedHost> {
    client
        .post(
            "/hosts",
            &HostRequest {
                name: name.to_owned(),
            },
        )
        .await
}

pub(super) async fn add_host(g: &Global, out: Printer, name: &str) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let created = added_host(&client, name).await?;
    out.print(&created, |c| {
        format!(
            "host {name} added. On it, run (the token works once):\n  shipgate agent --server {} --join {} --name {name} --ca-fingerprint {}\n",
            client.base(),
            c.token,
            c.ca_fingerprint
        )
    });
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn remove_host(g: &Global, out: Printer, name: &str) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let removed: HostRecord = client.delete(&format!("/hosts/{name}")).await?;
    out.print(&removed, |h| {
        format!(
            "host {} removed: its certificate is revoked and its agent cut off\n",
            h.name
        )
    });
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn hosts(g: &Global, out: Printer) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let hosts: Vec<HostView> = client.get("/hosts", &[]).await?;
    out.print(&hosts, |hosts| {
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.data_plane.clone(),
                    if h.connected {
                        format!("connected since {}", h.since.strftime("%Y-%m-%d %H:%M:%S"))
                    } else {
                        format!(
                            "UNREACHABLE since {}",
                            h.since.strftime("%Y-%m-%d %H:%M:%S")
                        )
                    },
                    h.pid.map_or("-".into(), |p| p.to_string()),
                    h.version.clone().unwrap_or_else(|| "-".into()),
                    h.instances.to_string(),
                    h.address.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            &[
                "HOST",
                "DATA PLANE",
                "STATE",
                "PID",
                "VERSION",
                "INSTANCES",
                "ADDRESS",
            ],
            &rows,
        )
    });
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn logs(
    g: &Global,
    app: &str,
    env: &str,
    follow: bool,
    lines: usize,
    host: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let mut base = vec![("app", app.to_owned()), ("env", env.to_owned())];
    if let Some(h) = host {
        base.push(("host", h));
    }
    let mut query = base.to_vec();
    query.push(("lines", lines.to_string()));
    let mut chunk: LogChunk = client.get("/logs", &query).await?;
    loop {
        print!("{}", chunk.text);
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let mut query = base.to_vec();
        query.push(("offset", chunk.offset.to_string()));
        chunk = client.get("/logs", &query).await?;
    }
}

pub(super) async fn audit(
    g: &Global,
    out: Printer,
    verify: bool,
    app: Option<String>,
    env: Option<String>,
    limit: i64,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    if verify {
        let report: AuditReport = client.get("/audit/verify", &[]).await?;
        out.print(&report, |r| match &r.problem {
            None => format!(
                "audit log intact: {} events, hash chain verified",
                r.checked
            ),
            Some(problem) => format!(
                "audit log BROKEN after {} intact events: {problem}",
                r.checked
            ),
        });
        return Ok(if report.problem.is_none() {
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
    let mut events: Vec<Event> = client.get("/events", &query).await?;
    events.reverse();
    out.print(&events, |events| {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    e.at.to_string(),
                    e.actor.clone(),
                    e.kind.to_string(),
                    e.message.clone(),
                ]
            })
            .collect();
        table(&["ID", "AT", "ACTOR", "KIND", "WHAT"], &rows)
    });
    Ok(ExitCode::SUCCESS)
}

/// The environments a token is limited to, or `all`.
fn scope(t: &TokenRecord, all: &str) -> String {
    if t.envs.is_empty() {
        all.to_owned()
    } else {
        let envs: Vec<&str> = t.envs.iter().map(|e| e.as_str()).collect();
        envs.join(", ")
    }
}

pub(super) async fn token(
    g: &Global,
    out: Printer,
    command: TokenCommand,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    match command {
        TokenCommand::Create {
            name,
            role,
            envs,
            person,
            expires,
        } => {
            let body = TokenRequest {
                name,
                role: role.to_string(),
                envs: envs.iter().map(ToString::to_string).collect(),
                person,
                expires,
            };
            let created: CreatedToken = client.post("/tokens", &body).await?;
            out.print(&created, |c| {
                format!(
                    "{}\n(token `{}`, role {}, for {}; it is shown this once: store it now, for example in SHIPGATE_TOKEN)",
                    c.token,
                    c.record.name,
                    c.record.role,
                    scope(&c.record, "every environment")
                )
            });
        }
        TokenCommand::List => {
            let tokens: Vec<TokenRecord> = client.get("/tokens", &[]).await?;
            out.print(&tokens, |tokens| {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        let state = match (&t.revoked_at, &t.expires_at) {
                            (Some(at), _) => format!("revoked {at}"),
                            (None, Some(e)) if *e <= jiff::Timestamp::now() => {
                                format!("expired {e}")
                            }
                            (None, Some(e)) => format!("active until {e}"),
                            (None, None) => "active".to_owned(),
                        };
                        vec![
                            t.name.clone(),
                            t.role.to_string(),
                            scope(t, "all"),
                            t.created_at.to_string(),
                            state,
                        ]
                    })
                    .collect();
                table(&["NAME", "ROLE", "ENVIRONMENTS", "CREATED", "STATE"], &rows)
            });
        }
        TokenCommand::Revoke { name } => {
            let revoked: TokenRecord = client.delete(&format!("/tokens/{name}")).await?;
            out.print(&revoked, |t| {
                format!("token `{}` revoked; it no longer works", t.name)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
