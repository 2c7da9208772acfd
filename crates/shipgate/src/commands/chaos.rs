//! `shipgate chaos inject|list|clear`: HTTP faults injected on purpose into an environment's
//! router, each ending by itself.

use std::process::ExitCode;

use shipgate_api::answers::ProxyFaultView;
use shipgate_api::records::FaultRecord;
use shipgate_api::requests::ChaosRequest;

use crate::cli::{ChaosCommand, Global};
use crate::client::connect;
use crate::output::{Printer, table};

fn when(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// What `chaos list` shows: the HTTP faults, and the toxics and downed dependency proxies.
#[derive(serde::Serialize)]
struct Listing {
    faults: Vec<FaultRecord>,
    proxies: Vec<ProxyFaultView>,
}

fn proxy_rows(toxics: &[ProxyFaultView]) -> String {
    let rows: Vec<Vec<String>> = toxics
        .iter()
        .map(|t| {
            vec![
                t.proxy.clone(),
                match &t.toxic {
                    Some(x) => format!(
                        "toxic {} ({} {}, {})",
                        x.name,
                        x.kind,
                        x.stream.as_str(),
                        serde_json::Value::Object(x.attributes.clone())
                    ),
                    None => "down".to_owned(),
                },
                t.created_by.clone(),
                format!("until {}", when(&t.ends_at)),
            ]
        })
        .collect();
    table(&["PROXY", "TOXIC", "BY", "END"], &rows)
}

fn rows(faults: &[FaultRecord]) -> String {
    if faults.is_empty() {
        return "no fault is in force\n".into();
    }
    let rows: Vec<Vec<String>> = faults
        .iter()
        .map(|f| {
            vec![
                format!("#{}", f.id),
                f.env.to_string(),
                f.fault.to_string(),
                f.created_by.clone(),
                match (&f.ended_at, &f.ended_by) {
                    (Some(at), Some(by)) => format!("ended {} by {by}", when(at)),
                    _ => format!("until {}", when(&f.ends_at)),
                },
            ]
        })
        .collect();
    table(&["ID", "ENV", "FAULT", "BY", "END"], &rows)
}

pub(super) async fn run(
    g: &Global,
    out: Printer,
    command: ChaosCommand,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    match command {
        ChaosCommand::Inject {
            env,
            app,
            abort,
            delay,
            jitter,
            percent,
            path,
            header,
            duration,
        } => {
            let req = ChaosRequest {
                env: env.to_string(),
                app: app.to_string(),
                abort,
                delay,
                jitter,
                percent: Some(percent),
                path,
                header,
                duration,
            };
            let made: FaultRecord = client.post("/chaos", &req).await?;
            out.print(&made, |f| {
                format!(
                    "fault #{} in {}: {} until {} (shipgate chaos clear {} ends it sooner)\n",
                    f.id,
                    f.env,
                    f.fault,
                    when(&f.ends_at),
                    f.id
                )
            });
        }
        ChaosCommand::List { env, all } => {
            let mut query: Vec<(&str, String)> =
                env.iter().map(|e| ("env", e.to_string())).collect();
            if all {
                query.push(("all", "true".into()));
            }
            let faults: Vec<FaultRecord> = client.get("/chaos", &query).await?;
            let mut toxics: Vec<ProxyFaultView> = client.get("/chaos/proxies", &[]).await?;
            toxics.retain(|t| env.as_ref().is_none_or(|e| t.env == *e));
            let listing = Listing {
                faults,
                proxies: toxics,
            };
            out.print(&listing, |l| {
                let mut said = rows(&l.faults);
                if !l.proxies.is_empty() {
                    said.push('\n');
                    said.push_str(&proxy_rows(&l.proxies));
                }
                said
            });
        }
        ChaosCommand::Clear { id, env, app } => {
            if id.is_none() && env.is_none() && app.is_none() {
                anyhow::bail!(
                    "say which faults to end: a number (shipgate chaos clear 3), --env or --app"
                );
            }
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(id.map(|i| ("id", i.to_string())));
            query.extend(env.map(|e| ("env", e.to_string())));
            query.extend(app.map(|a| ("app", a.to_string())));
            let ended: Vec<FaultRecord> = client.delete_with("/chaos", &query).await?;
            out.print(&ended, |ended| {
                if ended.is_empty() {
                    return "no fault was in force there\n".into();
                }
                ended
                    .iter()
                    .map(|f| format!("fault #{} in {} ended: {}\n", f.id, f.env, f.fault))
                    .collect()
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
