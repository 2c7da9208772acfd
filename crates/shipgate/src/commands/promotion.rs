//! `shipgate promote`, `approve`/`reject`, `freeze`/`unfreeze` and `rollback`, and waiting for
//! a promotion to end.

use std::process::ExitCode;

use shipgate_api::answers::DecisionRecorded;
use shipgate_api::records::Promotion;
use shipgate_api::requests::{DecisionRequest, FreezeRequest, PromoteRequest, RollbackRequest};
use shipgate_core::gate::Freeze;
use shipgate_core::{PromotionState, Verdict};

use crate::cli::Global;
use crate::client::{Client, connect};
use crate::output::Printer;

/// Waits for a promotion when asked, printing progress; exit code follows its outcome.
pub(super) async fn finish_promotion(
    client: &Client,
    out: Printer,
    promotion: Promotion,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let id = promotion.id;
    let what = format!(
        "{}@{} → {}{}",
        promotion.app,
        promotion.version,
        promotion.env,
        if promotion.kind == shipgate_core::PromotionKind::Hotfix {
            " (a hotfix)"
        } else {
            ""
        }
    );
    if !wait {
        out.print(&promotion, |p| match p.state {
            // A rollback to the warm standby is done by the time the server answers.
            PromotionState::Succeeded => format!("promotion {id} succeeded: {what}"),
            // A rollback that ended the promotion in flight, with nothing live before it.
            state if state.is_terminal() => format!(
                "promotion {id} {state}: {what}{}",
                p.reason
                    .as_deref()
                    .map(|r| format!("\n  reason: {r}"))
                    .unwrap_or_default()
            ),
            _ => format!(
                "promotion {id} accepted: {what} (follow it: shipgate history {} --env {})",
                p.app, p.env
            ),
        });
        return Ok(ExitCode::SUCCESS);
    }
    let done = client
        .wait_promotion(id, |state| out.progress(&format!("{what}: {state}")))
        .await?;
    let state = done.promotion.state;
    out.print(&done, |d| {
        let mut text = format!("promotion {id} {state}: {what}");
        if let Some(reason) = &d.promotion.reason {
            text.push_str(&format!("\n  reason: {reason}"));
        }
        // A heal says what it put back and where the drifted files went.
        if let Some(heal) = d.gates.iter().find(|g| g.name == "heal") {
            text.push_str(&format!("\n  heal: {}", heal.output.trim()));
        }
        if let Some(failed) = d.gates.iter().find(|g| !g.passed) {
            text.push_str(&format!("\n  {} output:\n", failed.name));
            let lines: Vec<&str> = failed.output.lines().rev().take(20).collect();
            for line in lines.into_iter().rev() {
                text.push_str(&format!("    {line}\n"));
            }
        }
        text
    });
    Ok(if state == PromotionState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(super) async fn promote(
    g: &Global,
    out: Printer,
    body: PromoteRequest,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let promotion: Promotion = client.post("/promotions", &body).await?;
    finish_promotion(&client, out, promotion, wait).await
}

/// `approve` and `reject`.
pub(super) async fn decide(
    g: &Global,
    out: Printer,
    body: DecisionRequest,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let answer: DecisionRecorded = client.post("/approvals", &body).await?;
    let DecisionRequest {
        release,
        env,
        verdict,
        ..
    } = &body;
    // What it waits on now that this decision is in; a rejection of a promotion under way
    // ends it at once, so that end is waited for and said.
    let mut now: Option<shipgate_api::status::HistoryEntry>;
    let mut tries = 0;
    loop {
        now = client
            .get(&format!("/promotions/{}", answer.promotion.id), &[])
            .await
            .ok();
        let under_way = *verdict == Verdict::Reject
            && answer.promotion.state != PromotionState::Pending
            && now
                .as_ref()
                .is_some_and(|p| !p.promotion.state.is_terminal());
        tries += 1;
        if !under_way || tries > 300 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    out.print(&answer, |a| {
        let mut text = format!(
            "{} {} {release} into {env} (promotion {})",
            a.decision.actor,
            verdict.past(),
            a.promotion.id
        );
        if *verdict == Verdict::Reject {
            match &now {
                _ if a.promotion.state == PromotionState::Pending => {
                    text.push_str("; it will not deploy");
                }
                Some(p) if p.promotion.state.is_terminal() => text.push_str(&format!(
                    "; it was {} and is {} now: {}",
                    a.promotion.state,
                    p.promotion.state,
                    p.promotion.reason.as_deref().unwrap_or("")
                )),
                _ => text.push_str(&format!(
                    "; it was {} and is being ended; follow it with shipgate history {} --env {env}",
                    a.promotion.state, a.promotion.app
                )),
            }
            return text;
        }
        let follow = format!("shipgate history {} --env {env}", a.promotion.app);
        match &now {
            Some(p) if !p.waiting_on.is_empty() => {
                let waits: Vec<&str> = p.waiting_on.iter().map(|w| w.message.as_str()).collect();
                text.push_str(&format!("\n  it still waits on: {}", waits.join("; ")));
            }
            Some(p) if p.promotion.state.is_terminal() => {
                text.push_str(&format!(
                    "\n  it is {} now; see {follow}",
                    p.promotion.state
                ));
            }
            _ => text.push_str(&format!(
                "\n  it waits on nothing more and deploys now; follow it with {follow}"
            )),
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}

/// `freeze` (with a reason) and `unfreeze` (without); no environment means all of them.
pub(super) async fn freeze(
    g: &Global,
    out: Printer,
    env: Option<String>,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let scope = env
        .clone()
        .unwrap_or_else(|| "every environment".to_owned());
    let freezing = reason.is_some();
    let answer: Freeze = match reason {
        Some(reason) => {
            let body = FreezeRequest {
                env: env.clone(),
                reason,
            };
            client.post("/freezes", &body).await?
        }
        None => {
            let path = match &env {
                Some(e) => format!("/freezes?env={e}"),
                None => "/freezes".to_owned(),
            };
            client.delete(&path).await?
        }
    };
    out.print(&answer, |f| {
        if freezing {
            format!(
                "{scope} is frozen: {}\n  promotions there wait until: shipgate unfreeze {}",
                f.reason,
                if f.env.is_none() {
                    "--all".to_owned()
                } else {
                    format!("--env {scope}")
                }
            )
        } else {
            format!("{scope} is no longer frozen (it was: {})", f.reason)
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `redeploy`: the live release promoted again into its environment, so the current config
/// goes live through that environment's gates.
pub(super) async fn redeploy(
    g: &Global,
    out: Printer,
    app: &str,
    env: &str,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let status: Vec<shipgate_api::status::AppStatus> =
        client.get("/status", &[("app", app.to_owned())]).await?;
    let live = status
        .iter()
        .flat_map(|a| &a.environments)
        .find(|e| e.env.as_str() == env)
        .and_then(|e| e.live.as_ref())
        .map(|l| l.version.to_string());
    let Some(version) = live else {
        anyhow::bail!(
            "nothing of {app} is live in {env}, so there is nothing to redeploy: promote a release there (shipgate promote {app}@VERSION --to {env})"
        );
    };
    let body = PromoteRequest {
        release: format!("{app}@{version}"),
        env: env.to_owned(),
        override_reason: None,
        hotfix: None,
    };
    let promotion: Promotion = client.post("/promotions", &body).await?;
    finish_promotion(&client, out, promotion, wait).await
}

pub(super) async fn rollback(
    g: &Global,
    out: Printer,
    app: &str,
    env: &str,
    to: Option<String>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let body = RollbackRequest {
        app: app.to_owned(),
        env: env.to_owned(),
        to,
    };
    // What is live now: if its promotion migrated the database, a switch does not undo that.
    let query = [
        ("app", app.to_owned()),
        ("env", env.to_owned()),
        ("limit", "5".to_owned()),
    ];
    let recent: Vec<shipgate_api::status::HistoryEntry> =
        client.get("/history", &query).await.unwrap_or_default();
    let migrated = recent
        .iter()
        .find(|h| h.promotion.state == PromotionState::Succeeded)
        .filter(|h| h.gates.iter().any(|g| g.name == "migrate" && g.passed))
        .map(|h| h.promotion.clone());
    let promotion: Promotion = client.post("/rollbacks", &body).await?;
    if let Some(m) = migrated {
        let query = [("app", app.to_owned()), ("env", env.to_owned())];
        let backups: Vec<shipgate_api::records::BackupRecord> =
            client.get("/backups", &query).await.unwrap_or_default();
        let before = backups
            .iter()
            .find(|b| b.reason == format!("before promotion {}", m.id) && b.state == "restorable");
        let restore = match before {
            Some(b) => format!(
                "the backup taken just before it is backup {}; to bring the data back too, as a second step: shipgate backup restore {app} --env {env} --id {} --reason TEXT",
                b.id, b.id
            ),
            None => format!(
                "no backup was taken just before it (see: shipgate backup list {app} --env {env})"
            ),
        };
        eprintln!(
            "note: the database was not rolled back: {}@{} (promotion {}) migrated it, and a switch of traffic does not undo that; {restore}",
            m.app, m.version, m.id
        );
    }
    finish_promotion(&client, out, promotion, wait).await
}
