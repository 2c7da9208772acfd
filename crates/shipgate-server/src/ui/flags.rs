//! The flags of an app on its environment page: each flag's state there, and for a deployer
//! of the environment an On and an Off (kill switch) button.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use shipgate_core::flag::FlagState;
use shipgate_core::{Action, AppName, EnvName};

use super::Viewer;
use super::pages::{Badge, Page, PageError, allow, environment_link, error_page, from_problem};
use crate::AppState;

/// One flag as the environment page lists it.
pub(crate) struct FlagRow {
    pub key: String,
    pub kind: String,
    pub description: String,
    pub state: Badge,
    pub summary: String,
    pub action: String,
}

/// The flags `app` declares, with their state in `env`.
pub(crate) async fn rows(
    state: &AppState,
    app: &AppName,
    env: &EnvName,
) -> Result<Vec<FlagRow>, PageError> {
    let flags = state
        .engine
        .flags_of(env)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(flags
        .flags
        .into_iter()
        .filter(|(_, (owner, _, _))| owner == app)
        .map(|(key, (_, config, s))| FlagRow {
            action: format!(
                "{}/flags/{key}",
                environment_link(app.as_str(), env.as_str())
            ),
            state: match &s {
                FlagState::Off => Badge::new("idle", "○", "off"),
                FlagState::On { .. } => Badge::new("ok", "●", "on"),
                FlagState::Rules { .. } => Badge::new("run", "◐", "rules"),
            },
            summary: s.to_string(),
            kind: config.kind.as_str().to_owned(),
            description: config.description.unwrap_or_default(),
            key,
        })
        .collect())
}

/// A flag change of the app waiting for approvals in the environment.
pub(crate) struct ChangeRow {
    pub id: i64,
    pub what: String,
    pub by: String,
    pub approvals: String,
    pub action: String,
}

/// The flag changes of `app` waiting in `env`.
pub(crate) async fn waiting(
    state: &AppState,
    app: &AppName,
    env: &EnvName,
) -> Result<Vec<ChangeRow>, PageError> {
    let needed = state
        .engine
        .config()
        .environment(env)
        .and_then(|e| e.require.approvals.clone());
    let changes = state
        .engine
        .store()
        .flag_changes(Some(env), true)
        .await
        .map_err(|e| from_problem(shipgate_engine::EngineError::from(e).into()))?;
    Ok(changes
        .into_iter()
        .filter(|c| c.app == *app)
        .map(|c| ChangeRow {
            what: c
                .changes
                .iter()
                .map(|f| format!("{}: {} -> {}", f.flag, f.before, f.after))
                .collect::<Vec<_>>()
                .join("; "),
            approvals: match &needed {
                Some(rule) => format!(
                    "{} of {}",
                    shipgate_core::gate::counted_approvers(rule, &c.decisions).len(),
                    rule.count
                ),
                None => "none needed now".to_owned(),
            },
            action: format!(
                "{}/flag-changes/{}",
                environment_link(app.as_str(), env.as_str()),
                c.id
            ),
            by: c.requested_by,
            id: c.id,
        })
        .collect())
}

/// The Approve and Reject buttons of a waiting flag change.
#[derive(Deserialize)]
pub(crate) struct DecisionForm {
    csrf: String,
    verdict: String,
    comment: Option<String>,
}

pub(crate) async fn decide(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env, id)): Path<(String, String, i64)>,
    Form(f): Form<DecisionForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let bad = |e: String| error_page(axum::http::StatusCode::BAD_REQUEST, &e);
    let env = EnvName::parse(&env).map_err(|e| bad(e.to_string()))?;
    allow(&viewer, Action::Approve, Some(&env))?;
    let verdict = match f.verdict.as_str() {
        "approve" => shipgate_core::Verdict::Approve,
        "reject" => shipgate_core::Verdict::Reject,
        other => return Err(bad(format!("`{other}` is neither approve nor reject"))),
    };
    let comment = f
        .comment
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    state
        .engine
        .decide_flag_change(&viewer.caller.0, id, verdict, comment)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(Redirect::to(&environment_link(&app, env.as_str())).into_response())
}

/// The On and Off buttons.
#[derive(Deserialize)]
pub(crate) struct FlagForm {
    csrf: String,
    to: String,
}

pub(crate) async fn set(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env, key)): Path<(String, String, String)>,
    Form(f): Form<FlagForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let bad = |e: String| error_page(axum::http::StatusCode::BAD_REQUEST, &e);
    let app = AppName::parse(&app).map_err(|e| bad(e.to_string()))?;
    let env = EnvName::parse(&env).map_err(|e| bad(e.to_string()))?;
    allow(&viewer, Action::Promote, Some(&env))?;
    let to = match f.to.as_str() {
        "off" => FlagState::Off,
        "on" => {
            let config = state.engine.config();
            let variant = config
                .app(&app)
                .and_then(|a| a.flags.get(&key))
                .and_then(|f| f.on_variant().map(str::to_owned))
                .ok_or_else(|| {
                    bad(format!(
                        "flag `{key}` has several variants to turn on; name one: shipgate flag on {app} {key} --env {env} --variant V"
                    ))
                })?;
            FlagState::On { variant }
        }
        other => return Err(bad(format!("`{other}` is neither on nor off"))),
    };
    state
        .engine
        .set_flag(&viewer.caller.0, &env, &app, &key, to)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(Redirect::to(&environment_link(app.as_str(), env.as_str())).into_response())
}
