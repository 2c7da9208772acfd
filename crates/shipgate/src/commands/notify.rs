//! `shipgate notify list|retry|test`: notification targets, their dead letters, a test event;
//! and `shipgate dora`: the DORA metrics those events and promotions add up to.

use std::process::ExitCode;

use shipgate_api::answers::{DoraView, NotifyView};
use shipgate_api::records::Delivery;
use shipgate_api::requests::{NotifyRetryRequest, NotifyTestRequest};

use crate::cli::{Global, NotifyCommand};
use crate::client::connect;
use crate::output::{Printer, table};

pub(super) async fn run(
    g: &Global,
    out: Printer,
    command: NotifyCommand,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    match command {
        NotifyCommand::List => {
            let view: NotifyView = client.get("/notify", &[]).await?;
            out.print(&view, |v| {
                if v.targets.is_empty() {
                    return "no notification target ([notify.NAME] with url and events in the config adds one)\n".into();
                }
                let rows: Vec<Vec<String>> = v
                    .targets
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.format.clone(),
                            t.url.clone(),
                            t.events.join(", "),
                            if t.signed { "signed" } else { "-" }.into(),
                            t.delivered.to_string(),
                            t.pending.to_string(),
                            t.dead.to_string(),
                        ]
                    })
                    .collect();
                let mut text = table(
                    &["TARGET", "FORMAT", "URL", "EVENTS", "SIGNED", "DELIVERED", "PENDING", "DEAD"],
                    &rows,
                );
                if !v.dead.is_empty() {
                    text.push_str("\ndead letters (shipgate notify retry ID sends one again):\n");
                    for d in &v.dead {
                        text.push_str(&format!(
                            "  #{} to {}: event {}, {} attempts, last: {}\n",
                            d.id,
                            d.target,
                            d.event_id,
                            d.attempts,
                            d.last_error.as_deref().unwrap_or("-")
                        ));
                    }
                }
                text
            });
        }
        NotifyCommand::Retry { ids, all } => {
            let req = NotifyRetryRequest { ids, all };
            let again: Vec<Delivery> = client.post("/notify/retry", &req).await?;
            out.print(&again, |again| {
                if again.is_empty() {
                    return "no delivery is dead: nothing was sent again\n".to_owned();
                }
                again
                    .iter()
                    .map(|d| format!("delivery #{} to {} is sent again\n", d.id, d.target))
                    .collect()
            });
        }
        NotifyCommand::Test { name } => {
            let answer: serde_json::Value = client
                .post(
                    "/notify/test",
                    &NotifyTestRequest {
                        target: name.clone(),
                    },
                )
                .await?;
            out.print(&answer, |a| {
                format!(
                    "a test event (#{}) is on its way to {name}; shipgate notify list shows how it went\n",
                    a["event_id"]
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

use shipgate_core::dora::human as took;

pub(super) async fn dora(
    g: &Global,
    out: Printer,
    app: Option<shipgate_core::AppName>,
    days: u32,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let mut query = vec![("days", days.to_string())];
    query.extend(app.map(|a| ("app", a.to_string())));
    let view: DoraView = client.get("/dora", &query).await?;
    out.print(&view, |v| {
        if v.figures.is_empty() {
            return format!("no promotion finished in the last {} days\n", v.days);
        }
        let rows: Vec<Vec<String>> = v
            .figures
            .iter()
            .map(|f| {
                let production = v.production.as_ref().is_some_and(|p| p.as_str() == f.env);
                vec![
                    f.app.clone(),
                    if production {
                        format!("{} (production)", f.env)
                    } else {
                        f.env.clone()
                    },
                    format!("{:.2}/day ({})", f.per_day, f.frequency),
                    took(f.lead_time_secs, f.lead_time.as_deref()),
                    shipgate_core::dora::signoff_share(f),
                    f.change_failure_rate.map_or("-".into(), |r| {
                        format!("{:.0}% ({}/{})", r * 100.0, f.failed_changes, f.changes)
                    }),
                    took(f.restore_secs, f.restore.as_deref()),
                ]
            })
            .collect();
        format!(
            "DORA metrics over the last {} days\n{}",
            v.days,
            table(
                &[
                    "APP",
                    "ENV",
                    "DEPLOYMENT FREQUENCY",
                    "LEAD TIME",
                    "OF IT SIGN-OFF",
                    "CHANGE FAILURE RATE",
                    "TIME TO RESTORE"
                ],
                &rows
            )
        )
    });
    Ok(ExitCode::SUCCESS)
}
