//! The dashboard's `/dora` page: each app and environment's four metrics over 7, 30 or 90
//! days, with a chart per environment of deployments (bars) and failed changes (red) per day.

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;
use shipgate_core::Action;
use shipgate_core::dora::Figures;

use super::Viewer;
use super::pages::{Layout, Page, allow, from_problem, html};
use crate::AppState;

/// `?days=`.
#[derive(Deserialize)]
pub(crate) struct DoraQuery {
    days: Option<u32>,
}

/// One app in one environment, as the page shows it.
pub(crate) struct Row {
    pub app: String,
    pub env: String,
    pub production: bool,
    pub frequency: String,
    pub lead_time: String,
    pub signoff: String,
    pub failure_rate: String,
    pub restore: String,
    pub chart: String,
}

#[derive(Template)]
#[template(path = "dora.html")]
struct DoraPage {
    layout: Layout,
    days: u32,
    windows: Vec<(u32, bool)>,
    rows: Vec<Row>,
}

use shipgate_core::dora::human as duration;

/// Bars of deployments per day, failures drawn over them in red.
fn chart(f: &Figures) -> String {
    let (w, h) = (360.0, 60.0);
    let most = f
        .series
        .iter()
        .map(|d| d.deployments.max(d.failures))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let step = w / f.series.len().max(1) as f64;
    let mut bars = String::new();
    for (i, d) in f.series.iter().enumerate() {
        let x = i as f64 * step;
        for (n, class) in [(d.deployments, "deploy"), (d.failures, "failure")] {
            if n > 0 {
                let bh = n as f64 / most * (h - 4.0);
                bars.push_str(&format!(
                    "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{}: {n} {}</title></rect>",
                    h - bh,
                    (step - 1.0).max(1.0),
                    d.day,
                    if class == "deploy" { "deployments" } else { "failed changes" }
                ));
            }
        }
    }
    format!(
        "<svg class=\"dora\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"deployments and failed changes per day of {} in {}\">{bars}</svg>",
        f.app, f.env
    )
}

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<DoraQuery>,
) -> Page {
    allow(&viewer, Action::Read, None)?;
    let days = q.days.filter(|d| (1..=365).contains(d)).unwrap_or(30);
    let view = crate::dora::view(&state, &viewer.caller, None, days)
        .await
        .map_err(from_problem)?;
    let rows = view
        .figures
        .iter()
        .map(|f| Row {
            app: f.app.clone(),
            env: f.env.clone(),
            production: view
                .production
                .as_ref()
                .is_some_and(|p| p.as_str() == f.env),
            frequency: format!("{:.2}/day ({})", f.per_day, f.frequency),
            lead_time: duration(f.lead_time_secs, f.lead_time.as_deref()),
            signoff: shipgate_core::dora::signoff_share(f),
            failure_rate: f.change_failure_rate.map_or("-".into(), |r| {
                format!("{:.0}% ({} of {})", r * 100.0, f.failed_changes, f.changes)
            }),
            restore: duration(f.restore_secs, f.restore.as_deref()),
            chart: chart(f),
        })
        .collect();
    let page = DoraPage {
        layout: Layout::new(&viewer, "DORA metrics", "dora"),
        days,
        windows: [7, 30, 90].into_iter().map(|d| (d, d == days)).collect(),
        rows,
    };
    Ok(html(&page))
}
