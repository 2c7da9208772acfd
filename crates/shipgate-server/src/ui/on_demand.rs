//! The board's list of on-demand environments, apart from the main path: template,
//! requester, releases, URL, what their tests said and the time left, with a Delete button for
//! those who may, which asks before it deletes.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use shipgate_core::on_demand::OnDemandState;
use shipgate_core::{Action, EnvName};

use super::Viewer;
use super::pages::{Badge, Layout, Page, PageError, allow, error_page, from_problem, html};
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

/// The question Delete asks first, naming the environment and what goes with it.
#[derive(Template)]
#[template(path = "delete_env.html")]
struct DeletePage {
    layout: Layout,
    name: String,
    template: String,
    requester: String,
    live: String,
    port: u16,
    action: String,
}

/// The environment the page is about, if the viewer may delete it.
fn deletable(viewer: &Viewer, name: &str) -> Result<EnvName, PageError> {
    let env =
        EnvName::parse(name).map_err(|e| error_page(StatusCode::BAD_REQUEST, &e.to_string()))?;
    allow(viewer, Action::OnDemand, Some(&env))?;
    Ok(env)
}

/// The board's Delete button: asks before anything is deleted.
pub(crate) async fn ask_to_delete(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Page {
    let env = deletable(&viewer, &name)?;
    question(&state, &viewer, &env).await
}

async fn question(state: &AppState, viewer: &Viewer, env: &EnvName) -> Page {
    let record = state
        .engine
        .on_demand_env(env)
        .await
        .map_err(|e| from_problem(e.into()))?;
    let view = crate::on_demand::view(state, record)
        .await
        .map_err(from_problem)?;
    let live: Vec<String> = view.live.iter().map(ToString::to_string).collect();
    Ok(html(&DeletePage {
        layout: Layout::new(viewer, format!("Delete {env}?"), "board"),
        name: env.to_string(),
        template: view.record.template.to_string(),
        requester: view.record.requester.clone(),
        live: live.join(", "),
        port: view.record.port,
        action: format!("/envs/{env}/delete"),
    }))
}

/// The form of the question: `confirm` names the environment the viewer agreed to delete.
#[derive(Deserialize)]
pub(crate) struct DeleteForm {
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// The question's answer: deletes the environment it named and goes back to the board. A post
/// that does not name it (a form from before the question was asked) gets the question.
pub(crate) async fn delete(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let env = deletable(&viewer, &name)?;
    if f.confirm != env.as_str() {
        return question(&state, &viewer, &env).await;
    }
    state
        .engine
        .delete_on_demand(&env, &viewer.caller.0.name)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(Redirect::to("/").into_response())
}
