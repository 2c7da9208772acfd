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
