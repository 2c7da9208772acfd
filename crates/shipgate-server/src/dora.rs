//! DORA metrics from shipgate's own history: `GET /api/v1/dora` and the dashboard's `/dora`
//! page, with a chart of each environment's deployments and failures per day. They cover the
//! environments that exist: each configured one, and the on-demand ones not deleted.

use axum::Json;
use axum::extract::State;
use shipgate_api::answers::DoraView;
use shipgate_api::requests::DoraQuery;
use shipgate_core::dora::Scope;
use shipgate_core::{Action, AppName};

use crate::AppState;
use crate::extract::{ApiQuery, Caller};
use crate::problem::Problem;

/// The window when none is asked for.
pub(crate) const DEFAULT_DAYS: u32 = 30;

/// The metrics `caller` may see.
pub(crate) async fn view(
    state: &AppState,
    caller: &Caller,
    app: Option<&AppName>,
    days: u32,
) -> Result<DoraView, Problem> {
    let config = state.engine.config();
    let at = jiff::Timestamp::now();
    let since = at
        .checked_sub(jiff::SignedDuration::from_secs(i64::from(days) * 86_400))
        .unwrap_or(jiff::Timestamp::MIN);
    let changes = state
        .engine
        .store()
        .dora_changes(since, app)
        .await
        .map_err(|e| Problem::from(shipgate_engine::EngineError::from(e)))?;
    let incidents = incidents(state, since).await?;
    let on_demand = state
        .engine
        .on_demand()
        .await
        .map_err(Problem::from)?
        .into_iter()
        .map(|r| (r.name.to_string(), r.created_at))
        .collect();
    let scope = Scope {
        apps: config
            .apps
            .iter()
            .filter(|a| app.is_none_or(|asked| &a.name == asked))
            .map(|a| a.name.to_string())
            .collect(),
        // The live config holds the on-demand environments too (made from a template).
        envs: config
            .environments
            .iter()
            .filter(|e| e.template.is_none())
            .map(|e| e.name.to_string())
            .collect(),
        on_demand,
    };
    let figures = shipgate_core::dora::figures_in(&scope, &changes, &incidents, at, days)
        .into_iter()
        .filter(|f| caller.sees(Some(&f.env)))
        .collect();
    // The end of the flow; where a UAT environment is a leaf beside it, the one testers do
    // not sign off in.
    let ends: Vec<_> = config
        .environments
        .iter()
        .filter(|e| shipgate_core::chaos::needs_admin(&config, &e.name))
        .collect();
    let production = ends
        .iter()
        .find(|e| e.signoff.is_none())
        .or(ends.first())
        .map(|e| e.name.clone());
    Ok(DoraView {
        days,
        at,
        production,
        figures,
    })
}

/// The alerts that fired since `since`, each paired with its resolving (by alert, app and
/// environment, in order).
async fn incidents(
    state: &AppState,
    since: jiff::Timestamp,
) -> Result<Vec<shipgate_core::dora::Incident>, Problem> {
    let store = state.engine.store();
    let read = |kind: &'static str| async move {
        store
            .events(shipgate_store::EventFilter {
                kind: Some(kind.into()),
                ..Default::default()
            })
            .await
            .map_err(|e| Problem::from(shipgate_engine::EngineError::from(e)))
    };
    let (fired, resolved) = (read("alert.firing").await?, read("alert.resolved").await?);
    let key = |e: &shipgate_store::Event| {
        (
            e.data
                .get("alert")
                .and_then(|a| a.as_str())
                .unwrap_or_default()
                .to_owned(),
            e.app.clone().unwrap_or_default(),
            e.env.clone().unwrap_or_default(),
        )
    };
    Ok(fired
        .iter()
        .filter(|f| f.at > since)
        .map(|f| shipgate_core::dora::Incident {
            app: f.app.clone().unwrap_or_default(),
            env: f.env.clone().unwrap_or_default(),
            started: f.at,
            ended: resolved
                .iter()
                .find(|r| r.id > f.id && key(r) == key(f))
                .map(|r| r.at),
        })
        .collect())
}

/// `GET /api/v1/dora`.
pub(crate) async fn dora(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DoraQuery>,
) -> Result<Json<DoraView>, Problem> {
    caller.allow(Action::Read, None)?;
    let app = q.app.as_deref().map(crate::api::app_name).transpose()?;
    let days = q.days.unwrap_or(DEFAULT_DAYS);
    if !(1..=365).contains(&days) {
        return Err(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid window",
            format!("days is from 1 to 365, not {days}"),
        ));
    }
    Ok(Json(view(&state, &caller, app.as_ref(), days).await?))
}
