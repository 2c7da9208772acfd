//! `shipgate notify list|retry|test`: notification targets, their dead letters, a test event.

use std::process::ExitCode;

use shipgate_api::answers::NotifyView;
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
