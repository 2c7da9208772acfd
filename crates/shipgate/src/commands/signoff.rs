//! `shipgate signoff`: a tester passes or fails one scenario of a release's user acceptance,
//! and `shipgate signoff status` shows the sheet.

use std::process::ExitCode;

use shipgate_api::answers::SignoffStatus;
use shipgate_api::requests::SignoffRequest;
use shipgate_api::status::HistoryEntry;
use shipgate_core::signoff::SignoffVerdict;

use crate::cli::{Global, SignoffArgs, SignoffCommand};
use crate::client::connect;
use crate::output::{Printer, table};

pub(super) async fn run(g: &Global, out: Printer, args: SignoffArgs) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    if let Some(SignoffCommand::Status { release, env }) = args.command {
        let query = [("release", release.to_string()), ("env", env.to_string())];
        let status: SignoffStatus = client.get("/signoffs", &query).await?;
        out.print(&status, describe);
        return Ok(ExitCode::SUCCESS);
    }
    // clap requires them without a subcommand.
    let (Some(release), Some(env), Some(scenario)) = (args.release, args.env, args.scenario) else {
        anyhow::bail!("name the release, --env and --scenario (see: shipgate signoff --help)");
    };
    let verdict = if args.fail {
        SignoffVerdict::Fail
    } else {
        SignoffVerdict::Pass
    };
    let body = SignoffRequest {
        release: release.to_string(),
        env: env.to_string(),
        scenario: scenario.clone(),
        verdict,
        note: args.note,
    };
    let status: SignoffStatus = client.post("/signoffs", &body).await?;
    // The last pass or a fail ends the promotion: its end is waited for and said.
    let mut ended = None;
    if matches!(status.outcome.as_str(), "complete" | "failed") {
        for _ in 0..300 {
            let now: HistoryEntry = client
                .get(&format!("/promotions/{}", status.promotion.id), &[])
                .await?;
            if now.promotion.state.is_terminal() {
                ended = Some(now.promotion);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    out.print(&status, |s| {
        let mut text = format!("{verdict} `{scenario}` of {release} in {env} recorded\n");
        match (&ended, s.outcome.as_str()) {
            (Some(p), "complete") => text.push_str(&format!(
                "every scenario passed: {release} is signed off and {} in {env}\n",
                p.state
            )),
            (Some(p), "failed") => text.push_str(&format!(
                "{release} failed its sign-off: promotion {} {}{}; {env} is back on {}\n",
                p.id,
                p.state,
                p.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                p.previous_version
                    .as_ref()
                    .map_or("nothing live".to_owned(), |v| format!("{}@{v}", p.app))
            )),
            _ => text.push_str(&format!("{}\n", s.progress)),
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}

fn describe(s: &SignoffStatus) -> String {
    let p = &s.promotion;
    let mut text = format!(
        "{}@{} in {}: {} ({})\nopen it at {}\nasked for by {} (who may not sign it); signed by the role {} or an admin\n",
        p.app, p.version, p.env, s.outcome, s.progress, s.url, s.requested_by, s.role
    );
    let rows: Vec<Vec<String>> = s
        .scenarios
        .iter()
        .flat_map(|sc| {
            if sc.entries.is_empty() {
                return vec![vec![
                    sc.name.clone(),
                    "waiting".into(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ]];
            }
            sc.entries
                .iter()
                .map(|e| {
                    vec![
                        sc.name.clone(),
                        e.verdict.to_string(),
                        e.by.clone(),
                        e.at.to_string(),
                        e.note.clone().unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .collect();
    text.push('\n');
    text.push_str(&table(&["SCENARIO", "SIGNED", "BY", "AT", "NOTE"], &rows));
    text.push_str(&match &s.since {
        Some(since) => format!("\nwhat changed since {since}, signed off here before:\n"),
        None => "\nnothing was signed off here before; this release:\n".to_owned(),
    });
    let rows: Vec<Vec<String>> = s
        .changes
        .iter()
        .map(|r| {
            vec![
                r.version.to_string(),
                r.commit.clone().unwrap_or_else(|| "-".into()),
                r.notes.clone().unwrap_or_default(),
            ]
        })
        .collect();
    text.push_str(&table(&["VERSION", "COMMIT", "NOTES"], &rows));
    text
}
