//! `shipgate canary status|resume|abort|skip`: a canary rollout under way.

use std::process::ExitCode;

use shipgate_api::records::Promotion;
use shipgate_api::requests::{AppEnv, CanarySkipRequest};
use shipgate_api::status::{CanaryView, SideFigures};

use crate::cli::{CanaryCommand, Global};
use crate::client::connect;
use crate::output::{Printer, table};

pub(super) async fn run(
    g: &Global,
    out: Printer,
    command: CanaryCommand,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let body = |app: &shipgate_core::AppName, env: &shipgate_core::EnvName| AppEnv {
        app: app.to_string(),
        env: env.to_string(),
    };
    match command {
        CanaryCommand::Status { app, env } => {
            let query = [("app", app.to_string()), ("env", env.to_string())];
            let view: CanaryView = client.get("/canary", &query).await?;
            out.print(&view, describe);
        }
        CanaryCommand::Resume { app, env } => {
            let view: CanaryView = client.post("/canary/resume", &body(&app, &env)).await?;
            out.print(&view, |v| {
                format!(
                    "resumed: {} goes on from step {} of {}\n",
                    v.canary,
                    v.step,
                    v.steps.len()
                )
            });
        }
        CanaryCommand::Skip { app, env, reason } => {
            let req = CanarySkipRequest {
                app: app.to_string(),
                env: env.to_string(),
                reason,
            };
            let view: CanaryView = client.post("/canary/skip", &req).await?;
            out.print(&view, |v| {
                format!(
                    "skipped: {} takes every request now; its verify follows (shipgate status {app})\n",
                    v.canary
                )
            });
        }
        CanaryCommand::Abort { app, env } => {
            let ended: Promotion = client.post("/canary/abort", &body(&app, &env)).await?;
            out.print(&ended, |p| {
                format!(
                    "aborted: {}@{} takes no request in {}; promotion {} is {}: {}\n",
                    p.app,
                    p.version,
                    p.env,
                    p.id,
                    p.state,
                    p.reason.as_deref().unwrap_or("-")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rollout, then both sides' figures.
pub(crate) fn describe(v: &CanaryView) -> String {
    let ms = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1} ms"));
    let row = |name: &str, f: &SideFigures| {
        vec![
            name.to_owned(),
            f.requests.to_string(),
            f.errors.to_string(),
            format!("{:.2}%", f.error_rate * 100.0),
            ms(f.p50_ms),
            ms(f.p99_ms),
        ]
    };
    let mut said = format!(
        "{} (promotion {}): {}\nsteps: {}\n",
        v.canary,
        v.promotion_id,
        v.message,
        v.steps.join(" → ")
    );
    if let Some(ends) = v.step_ends_at {
        said.push_str(&format!(
            "judged at {}\n",
            ends.strftime("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if let Some(last) = &v.last {
        said.push_str(&format!("last: {last}\n"));
    }
    said.push('\n');
    said.push_str(&table(
        &["SIDE", "REQUESTS", "ERRORS", "ERROR RATE", "P50", "P99"],
        &[
            row(&format!("canary {}", v.canary), &v.canary_figures),
            row(&format!("stable {}", v.stable), &v.stable_figures),
        ],
    ));
    said
}
