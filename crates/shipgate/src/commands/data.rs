//! `shipgate data refresh` and `data check`.

use std::process::ExitCode;

use shipgate_api::answers::DataCheck;
use shipgate_api::data::{DataMessage, Progress, RefreshReport};
use shipgate_api::requests::DataRefreshRequest;

use crate::cli::Global;
use crate::client::connect;
use crate::output::{Printer, table};

pub(super) async fn data_refresh(
    g: &Global,
    out: Printer,
    app: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let started = std::time::Instant::now();
    let mut outcome: Option<Result<RefreshReport, String>> = None;
    let body = DataRefreshRequest {
        app: app.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
    };
    client
        .post_lines("/data/refresh", &body, |m: DataMessage| match m {
            DataMessage::Progress(p) => out.progress(&progress_line(&p, started.elapsed())),
            DataMessage::Done(report) => outcome = Some(Ok(report)),
            DataMessage::Failed(reason) => outcome = Some(Err(reason)),
        })
        .await?;
    let report = match outcome {
        None => anyhow::bail!("the server ended the refresh without an outcome"),
        Some(Err(reason)) => {
            eprintln!("error: {reason}");
            return Ok(ExitCode::FAILURE);
        }
        Some(Ok(report)) => report,
    };
    out.print(&report, |r| {
        let rows: Vec<Vec<String>> = r
            .tables
            .iter()
            .map(|t| {
                let masked: Vec<String> = t
                    .masked
                    .iter()
                    .map(|(c, rule)| format!("{c}: {rule}"))
                    .collect();
                vec![
                    t.table.clone(),
                    t.rows.to_string(),
                    format!("{:.0}", t.rows as f64 / t.seconds.max(1e-6)),
                    if masked.is_empty() {
                        "-".into()
                    } else {
                        masked.join(", ")
                    },
                ]
            })
            .collect();
        format!(
            "{}refreshed {app} data in {to} from {from} in {:.1}s; leak check: 0 of {} masked columns leaked\n",
            table(&["TABLE", "ROWS", "ROWS/S", "MASKED"], &rows),
            r.seconds,
            r.leaks.columns.len()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// One table's progress with its rate and the time left, for a terminal.
fn progress_line(p: &Progress, elapsed: std::time::Duration) -> String {
    let (rows, total) = (p.rows as f64, p.total as f64);
    let rate = rows / elapsed.as_secs_f64().max(1e-3);
    let eta = if rate > 0.0 {
        (total - rows).max(0.0) / rate
    } else {
        0.0
    };
    format!(
        "{:<16} {:>10}/{:<10} rows  {:>9.0} rows/s  ETA {:>4.0}s",
        p.table, rows, total, rate, eta
    )
}

pub(super) async fn data_check(
    g: &Global,
    out: Printer,
    app: &str,
    env: &str,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query = [("app", app.to_owned()), ("env", env.to_owned())];
    let check: DataCheck = client.get("/data/check", &query).await?;
    out.print(&check, |c| {
        let rows: Vec<Vec<String>> = c
            .columns
            .iter()
            .map(|col| {
                vec![
                    format!("{}.{}", col.table, col.column),
                    col.rule.clone(),
                    col.checked.to_string(),
                    col.leaked.to_string(),
                ]
            })
            .collect();
        format!(
            "{}{env} compared with {}: {} values equal their source where the rule does not allow it\n",
            table(&["COLUMN", "RULE", "CHECKED", "LEAKED"], &rows),
            c.from,
            c.leaked
        )
    });
    Ok(if check.leaked == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
