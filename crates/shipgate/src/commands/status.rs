//! `shipgate status` and `history`.

use std::process::ExitCode;

use shipgate_api::status::{AppStatus, EnvironmentStatus, HistoryEntry, LeaderView, Traffic};

use crate::cli::Global;
use crate::client::connect;
use crate::output::{Printer, table};

pub(super) async fn status(
    g: &Global,
    out: Printer,
    app: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query = super::app_query(app);
    let apps: Vec<AppStatus> = client.get("/status", &query).await?;
    // Which server leads, for people (the JSON stays the list of apps; `GET /api/v1/leader`).
    let leader: Option<LeaderView> = client.get("/leader", &[]).await.ok();
    out.print(&apps, |apps| {
        let mut text = String::new();
        if let Some(l) = &leader {
            text.push_str(&format!(
                "leader: {} at {} since {} (epoch {})\n\n",
                l.server,
                l.address,
                l.since.strftime("%Y-%m-%d %H:%M:%S UTC"),
                l.epoch
            ));
        }
        text.push_str(&render_status(apps));
        text
    });
    Ok(ExitCode::SUCCESS)
}

/// Requests/s, error rate and latency of the last minute, or `-` without traffic.
fn traffic(t: Option<&Traffic>) -> String {
    let Some(t) = t.filter(|t| t.requests > 0) else {
        return "-".to_owned();
    };
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1}ms"));
    let faults = t
        .error_rate_with_faults
        .map(|r| format!(", {:.1}% with faults", r * 100.0))
        .unwrap_or_default();
    format!(
        "{}, {:.1}% 5xx{faults}, p50 {} p99 {}",
        t.volume(),
        t.error_rate * 100.0,
        ms(t.p50_ms),
        ms(t.p99_ms)
    )
}

/// How the instance of an environment is doing, in a few words.
fn health(app: &str, e: &EnvironmentStatus) -> String {
    if e.unhealthy.is_some() {
        return "CRASH-LOOPING (see shipgate audit)".to_owned();
    }
    if !e.drift.is_empty() {
        return "DRIFTED (see shipgate drift)".to_owned();
    }
    if !e.undeployed.is_empty() {
        return format!(
            "config changed, not deployed (shipgate redeploy {app} --env {})",
            e.env
        );
    }
    match (&e.instance, &e.live) {
        (None, None) => "-".to_owned(),
        (None, Some(_)) => "down".to_owned(),
        (Some(i), _) => {
            let crash = i
                .last_crash
                .as_ref()
                .map(|c| format!("; last crash: {c}"))
                .unwrap_or_default();
            if i.healthy {
                format!("healthy (pid {}, restarts {}{crash})", i.pid, i.restarts)
            } else {
                format!("unhealthy (restarts {}{crash})", i.restarts)
            }
        }
    }
}

/// The status table: one row per app and environment.
pub fn render_status(apps: &[AppStatus]) -> String {
    let mut rows = Vec::new();
    for a in apps {
        for e in &a.environments {
            let progress: Vec<String> = e
                .in_progress
                .iter()
                .map(|p| format!("{} {}", p.promotion.version, p.promotion.state))
                .collect();
            rows.push(vec![
                a.app.to_string(),
                e.env.to_string(),
                e.live
                    .as_ref()
                    .map_or("-".to_owned(), |l| l.version.to_string()),
                health(a.app.as_str(), e),
                e.url.clone(),
                traffic(e.traffic.as_ref()),
                match (&e.standby, &e.rollback_to) {
                    (Some(sb), _) => {
                        format!("{} until {}", sb.version, sb.until.strftime("%H:%M:%S"))
                    }
                    (None, Some(v)) => format!("- (rollback redeploys {v})"),
                    (None, None) => "-".to_owned(),
                },
                if progress.is_empty() {
                    "-".into()
                } else {
                    progress.join(", ")
                },
                if e.isolation.sandboxed {
                    "sandbox".into()
                } else {
                    "NONE".into()
                },
            ]);
        }
    }
    let mut text = table(
        &[
            "APP",
            "ENV",
            "LIVE",
            "HEALTH",
            "URL",
            "TRAFFIC (1 MIN)",
            "STANDBY",
            "IN PROGRESS",
            "ISOLATION",
        ],
        &rows,
    );
    text.push_str(&render_isolation(apps));
    text.push_str(&render_behind(apps));
    text.push_str(&render_hosts(apps));
    text.push_str(&render_waits(apps));
    text
}

/// The environments a hotfix went past, each with the promotion that brings it up to date.
fn render_behind(apps: &[AppStatus]) -> String {
    let mut text = String::new();
    for a in apps {
        for e in &a.environments {
            if let Some(b) = &e.behind {
                text.push_str(&format!(
                    "  {} in {} is behind {} ({}@{} came there by hotfix): {}\n",
                    a.app, e.env, b.env, a.app, b.version, b.command
                ));
            }
        }
    }
    if text.is_empty() {
        text
    } else {
        format!("\nbehind a hotfix:\n{text}")
    }
}

/// For environments on hosts, the live instance on each host, below the status table.
fn render_hosts(apps: &[AppStatus]) -> String {
    let mut text = String::new();
    for a in apps {
        for e in &a.environments {
            let Some(i) = e.instance.as_ref().filter(|i| !i.hosts.is_empty()) else {
                continue;
            };
            let given = e.live.as_ref().map_or_else(
                || "its live release".to_owned(),
                |l| format!("{}@{}", a.app, l.version),
            );
            let each: Vec<String> = i
                .hosts
                .iter()
                .map(|h| {
                    format!(
                        "{} pid {} {}{}",
                        h.host,
                        h.pid,
                        if h.healthy { "healthy" } else { "UNHEALTHY" },
                        if h.restarts > 0 {
                            format!(" ({} restarts)", h.restarts)
                        } else {
                            String::new()
                        }
                    )
                })
                .chain(i.unreachable.iter().map(|h| {
                    format!("{h} UNREACHABLE (it is given {given} when it connects again)")
                }))
                .collect();
            text.push_str(&format!("  {} in {}: {}\n", a.app, e.env, each.join(", ")));
        }
    }
    if text.is_empty() {
        text
    } else {
        format!("\nhosts:\n{text}")
    }
}

/// How each app and environment is confined, below the status table: one line per distinct
/// confinement, naming where it applies.
fn render_isolation(apps: &[AppStatus]) -> String {
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for a in apps {
        for e in &a.environments {
            let place = format!("{} in {}", a.app, e.env);
            match groups.iter_mut().find(|(d, _)| *d == e.isolation.detail) {
                Some((_, places)) => places.push(place),
                None => groups.push((&e.isolation.detail, vec![place])),
            }
        }
    }
    if groups.is_empty() {
        return String::new();
    }
    let mut text = "\nisolation:\n".to_owned();
    for (detail, places) in groups {
        text.push_str(&format!("  {}: {detail}\n", places.join(", ")));
    }
    text
}

/// What each waiting promotion waits on, and the freezes in force, below the status table.
fn render_waits(apps: &[AppStatus]) -> String {
    let mut waits = String::new();
    let mut watches = String::new();
    let mut canaries = String::new();
    let mut freezes: Vec<String> = Vec::new();
    let mut faults = String::new();
    let mut alerts = String::new();
    for a in apps {
        for e in &a.environments {
            for alert in &e.alerts {
                alerts.push_str(&format!("  {alert} ({} in {})\n", a.app, e.env));
            }
            for f in &e.faults {
                faults.push_str(&format!(
                    "  #{} in {}: {} until {} (by {})\n",
                    f.id,
                    f.env,
                    f.fault,
                    f.ends_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                    f.created_by
                ));
            }
            for f in &e.frozen {
                let scope = f
                    .env
                    .as_ref()
                    .map_or("every environment".to_owned(), ToString::to_string);
                let line = format!(
                    "  {scope} frozen by {} since {}: {}\n",
                    f.by, f.since, f.reason
                );
                if !freezes.contains(&line) {
                    freezes.push(line);
                }
            }
            for p in e.in_progress.iter().filter(|p| !p.waiting_on.is_empty()) {
                waits.push_str(&format!(
                    "  {}@{} → {} (promotion {}, requested by {}) waits on:\n",
                    a.app, p.promotion.version, e.env, p.promotion.id, p.promotion.requested_by
                ));
                for w in &p.waiting_on {
                    waits.push_str(&format!("    - {}\n", w.message));
                }
            }
            for (p, w) in e
                .in_progress
                .iter()
                .filter_map(|p| p.watch.as_ref().map(|w| (p, w)))
            {
                watches.push_str(&format!(
                    "  {}@{} in {} (promotion {}): {}\n",
                    a.app, p.promotion.version, e.env, p.promotion.id, w.message
                ));
            }
            for (p, c) in e
                .in_progress
                .iter()
                .filter_map(|p| p.canary.as_ref().map(|c| (p, c)))
            {
                canaries.push_str(&format!(
                    "  {} in {} (promotion {}): {}; canary {} requests, {:.2}% errors; stable {} requests, {:.2}% errors (shipgate canary status {} --env {})\n",
                    c.canary,
                    e.env,
                    p.promotion.id,
                    c.message,
                    c.canary_figures.requests,
                    c.canary_figures.error_rate * 100.0,
                    c.stable_figures.requests,
                    c.stable_figures.error_rate * 100.0,
                    a.app,
                    e.env
                ));
            }
        }
    }
    let mut text = String::new();
    if !canaries.is_empty() {
        text.push_str("\ncanary:\n");
        text.push_str(&canaries);
    }
    if !watches.is_empty() {
        text.push_str("\nwatching:\n");
        text.push_str(&watches);
    }
    if !waits.is_empty() {
        text.push_str("\nwaiting:\n");
        text.push_str(&waits);
    }
    if !freezes.is_empty() {
        text.push_str("\nfrozen:\n");
        text.push_str(&freezes.concat());
    }
    if !alerts.is_empty() {
        text.push_str("\nalerts firing:\n");
        text.push_str(&alerts);
    }
    if !faults.is_empty() {
        text.push_str("\nchaos (faults injected on purpose; shipgate chaos clear ID ends one):\n");
        text.push_str(&faults);
    }
    text
}

pub(super) async fn history(
    g: &Global,
    out: Printer,
    app: &str,
    env: Option<String>,
    limit: i64,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let mut query = vec![("app", app.to_owned()), ("limit", limit.to_string())];
    query.extend(env.map(|e| ("env", e)));
    let entries: Vec<HistoryEntry> = client.get("/history", &query).await?;
    out.print(&entries, |entries| {
        let mut text = String::new();
        for entry in entries {
            let p = &entry.promotion;
            text.push_str(&format!(
                "#{} {} {}@{} → {}  {}  by {} at {}\n",
                p.id,
                p.kind.as_str(),
                p.app,
                p.version,
                p.env,
                p.state,
                p.requested_by,
                p.created_at
            ));
            if let Some(reason) = &p.reason {
                text.push_str(&format!("    reason: {reason}\n"));
            }
            for w in &entry.waiting_on {
                text.push_str(&format!("    waits on: {}\n", w.message));
            }
            if let Some(w) = &entry.watch {
                text.push_str(&format!("    watching: {}\n", w.message));
            }
            if let Some(c) = &entry.canary {
                text.push_str(&format!("    canary: {}\n", c.message));
            }
            for d in &entry.decisions {
                let comment = d
                    .comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                let verdict = d.verdict.past();
                text.push_str(&format!(
                    "    {verdict} by {} ({}) at {}{comment}\n",
                    d.actor, d.role, d.at
                ));
            }
            for gate in &entry.gates {
                let mark = if gate.passed { "passed" } else { "FAILED" };
                text.push_str(&format!("    {mark}  {}\n", gate.name));
                // A failure says why; a passed watch or canary step says what it measured.
                if !gate.passed || gate.name == "watch" || gate.name.starts_with("canary") {
                    for line in gate.output.lines() {
                        text.push_str(&format!("        {line}\n"));
                    }
                }
            }
        }
        if text.is_empty() {
            "no promotions yet\n".into()
        } else {
            text
        }
    });
    Ok(ExitCode::SUCCESS)
}
