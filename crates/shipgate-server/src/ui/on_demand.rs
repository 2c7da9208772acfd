//! The board's list of on-demand environments, apart from the main path: template,
//! requester, releases, URL, what their tests said and the time left, with a Delete button for
//! those who may.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use shipgate_core::on_demand::OnDemandState;
use shipgate_core::{Action, EnvName};

use super::Viewer;
use super::pages::{Badge, CsrfForm, Page, allow, error_page, from_problem};
use crate::AppState;

/// One on-demand environment as the board lists it.
pub(crate) struct OnDemandRow {
    pub name: String,
    pub template: String,
    pub requester: String,
    pub state: Badge,
    pub live: String,
    pub url: String,
    pub named_url: String,
    pub outcome: String,
    pub left: String,
    pub can_delete: bool,
    pub delete: String,
}

fn badge(state: OnDemandState) -> Badge {
    match state {
        OnDemandState::Ready => Badge::new("ok", "●", "ready"),
        OnDemandState::Failed => Badge::new("bad", "▲", "failed"),
        OnDemandState::Creating => Badge::new("run", "▶", "creating"),
        OnDemandState::Deleting => Badge::new("idle", "○", "deleting"),
    }
}

/// The on-demand environments `viewer` sees, oldest first.
pub(crate) async fn rows(
    state: &AppState,
    viewer: &Viewer,
) -> Result<Vec<OnDemandRow>, super::pages::PageError> {
    let mut rows = Vec::new();
    let all = state
        .engine
        .on_demand()
        .await
        .map_err(|e| from_problem(e.into()))?;
    for r in all {
        if !viewer.caller.sees(Some(r.name.as_str())) {
            continue;
        }
        let can_delete = viewer
            .caller
            .0
            .check(Action::OnDemand, Some(&r.name))
            .is_ok();
        let view = crate::on_demand::view(state, r)
            .await
            .map_err(from_problem)?;
        let live: Vec<String> = view.live.iter().map(ToString::to_string).collect();
        let left = view.time_left();
        rows.push(OnDemandRow {
            left,
            delete: format!("/envs/{}/delete", view.record.name),
            name: view.record.name.to_string(),
            template: view.record.template.to_string(),
            requester: view.record.requester.clone(),
            state: badge(view.record.state),
            live: if live.is_empty() {
                "nothing live".into()
            } else {
                live.join(", ")
            },
            url: view.url,
            named_url: view.named_url.unwrap_or_default(),
            outcome: view.record.outcome.unwrap_or_default(),
            can_delete,
        });
    }
    Ok(rows)
}

/// The Delete button: deletes the environment and goes back to the board.
pub(crate) async fn delete(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let env = EnvName::parse(&name)
        .map_err(|e| error_page(axum::http::StatusCode::BAD_REQUEST, &e.to_string()))?;
    allow(&viewer, Action::OnDemand, Some(&env))?;
    state
        .engine
        .delete_on_demand(&env, &viewer.caller.0.name)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(Redirect::to("/").into_response())
}
