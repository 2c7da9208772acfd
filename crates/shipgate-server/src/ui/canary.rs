//! A canary rollout under way, as the environment and release pages show it: the current step,
//! the steps in a row, both sides' figures, and Resume, Abort and Skip for those who may. Abort
//! asks before it ends the rollout; Skip asks for a reason.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use shipgate_api::status::{CanaryState, CanaryView, SideFigures};
use shipgate_core::canary::Step;
use shipgate_core::{Action, AppName, EnvName};

use super::Viewer;
use super::pages::{
    Badge, CsrfForm, Layout, Page, PageError, allow, configured_app, env_param, environment_link,
    from_problem, html, short_time,
};
use crate::AppState;

/// One step of the row, marked by where the rollout stands.
pub(crate) struct StepCell {
    /// As the config writes it (`25%`, `pause`, `mirror 10%`), or `100%` for the end.
    pub name: String,
    /// `done`, `current` or `next`.
    pub class: &'static str,
    pub current: bool,
}

/// One side's figures in the current step's window, ready to show.
pub(crate) struct SideRow {
    /// `canary` or `stable`.
    pub side: &'static str,
    pub release: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: String,
    pub p50: String,
    pub p99: String,
}

/// The canary panel of one rollout.
pub(crate) struct CanaryPanel {
    pub promotion_id: shipgate_core::PromotionId,
    pub env: String,
    pub canary: String,
    pub stable: String,
    pub badge: Badge,
    /// Where it stands: `step 2 of 3 · 25% of requests`.
    pub now: String,
    /// When the step is judged, or what it waits for.
    pub judged: String,
    /// The last judgement, or why it holds.
    pub last: String,
    pub steps: Vec<StepCell>,
    pub figures: Vec<SideRow>,
    /// Resume: approvers and admins, while paused or held.
    pub can_resume: bool,
    /// Abort: deployers and admins.
    pub can_abort: bool,
    /// Skip: admins, with a reason.
    pub can_skip: bool,
    /// Where the buttons go: `/apps/web/environments/production/canary`.
    pub action: String,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.1} ms"))
}

fn side_row(side: &'static str, release: &str, f: &SideFigures) -> SideRow {
    SideRow {
        side,
        release: release.to_owned(),
        requests: f.requests,
        errors: f.errors,
        error_rate: format!("{:.2}%", f.error_rate * 100.0),
        p50: ms(f.p50_ms),
        p99: ms(f.p99_ms),
    }
}

/// Where the rollout stands, in the words of the panel's first line.
fn now(v: &CanaryView) -> String {
    let at = format!("step {} of {}", v.step, v.steps.len());
    let step = v
        .steps
        .get(v.step.saturating_sub(1))
        .and_then(|s| Step::parse(s).ok());
    match (v.state, step) {
        (CanaryState::Running, Some(Step::Mirror(m))) => format!(
            "{at} · mirroring {m}% of GET and HEAD requests (users meet only {})",
            v.stable
        ),
        (CanaryState::Running, _) => format!("{at} · {}% of requests", v.weight),
        (CanaryState::Paused, _) => {
            format!("{at} · paused at {}% of requests until resumed", v.weight)
        }
        (CanaryState::Held, _) => {
            // The engine writes the hold as `step N: why`; the step is said already.
            let why = v.last.as_deref().unwrap_or("too few requests to judge");
            let why = why
                .strip_prefix(&format!("step {}: ", v.step))
                .unwrap_or(why);
            format!("{at} · held at {}% of requests: {why}", v.weight)
        }
    }
}

fn badge(state: CanaryState) -> Badge {
    match state {
        CanaryState::Running => Badge::new("run", "▶", "running"),
        CanaryState::Paused => Badge::new("wait", "◆", "paused"),
        CanaryState::Held => Badge::new("wait", "◆", "held"),
    }
}

/// The panel of rollout `v` of `app` in `env`, with the buttons `viewer` may use.
pub(crate) fn panel(viewer: &Viewer, app: &AppName, env: &EnvName, v: &CanaryView) -> CanaryPanel {
    let may = |action| viewer.caller.allow(action, Some(env)).is_ok();
    let current = v.step.saturating_sub(1);
    let mut steps: Vec<StepCell> = v
        .steps
        .iter()
        .enumerate()
        .map(|(i, name)| StepCell {
            name: name.clone(),
            class: match i.cmp(&current) {
                std::cmp::Ordering::Less => "done",
                std::cmp::Ordering::Equal => "current",
                std::cmp::Ordering::Greater => "next",
            },
            current: i == current,
        })
        .collect();
    steps.push(StepCell {
        name: "100%".to_owned(),
        class: "next",
        current: false,
    });
    let judged = match (v.state, v.step_ends_at) {
        (CanaryState::Paused, _) => "not judged: a pause waits for Resume".to_owned(),
        (CanaryState::Held, Some(at)) => format!("judged again at {}", short_time(&at)),
        (_, Some(at)) => format!("judged at {}", short_time(&at)),
        (_, None) => String::new(),
    };
    CanaryPanel {
        promotion_id: v.promotion_id,
        env: env.to_string(),
        canary: v.canary.clone(),
        stable: v.stable.clone(),
        badge: badge(v.state),
        now: now(v),
        judged,
        last: v.last.clone().unwrap_or_default(),
        steps,
        figures: vec![
            side_row("canary", &v.canary, &v.canary_figures),
            side_row("stable", &v.stable, &v.stable_figures),
        ],
        can_resume: v.state != CanaryState::Running && may(Action::Approve),
        can_abort: may(Action::Rollback),
        can_skip: may(Action::Override),
        action: format!("{}/canary", environment_link(app.as_str(), env.as_str())),
    }
}

/// The app and environment of a canary button's path, once the viewer may do `action` there.
fn target(
    state: &AppState,
    viewer: &Viewer,
    app: &str,
    env: &str,
    action: Action,
) -> Result<(AppName, EnvName), PageError> {
    let app = configured_app(state, app)?;
    let env = env_param(env)?;
    allow(viewer, action, Some(&env))?;
    Ok((app, env))
}

fn back_to(app: &AppName, env: &EnvName) -> Page {
    Ok(Redirect::to(&environment_link(app.as_str(), env.as_str())).into_response())
}

/// Resume: a pause, or a step held for too few requests, goes on.
pub(crate) async fn resume(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let (app, env) = target(&state, &viewer, &app, &env, Action::Approve)?;
    state
        .engine
        .canary_resume(&app, &env, viewer.caller.name())
        .await
        .map_err(|e| from_problem(e.into()))?;
    back_to(&app, &env)
}

/// The Skip form: why the canary goes to every request at once.
#[derive(Deserialize)]
pub(crate) struct SkipForm {
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// Skip: the canary takes every request at once, and its `verify` follows.
pub(crate) async fn skip(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env)): Path<(String, String)>,
    Form(f): Form<SkipForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let (app, env) = target(&state, &viewer, &app, &env, Action::Override)?;
    let reason = crate::api::skip_reason(&f.reason).map_err(from_problem)?;
    state
        .engine
        .canary_skip(&app, &env, viewer.caller.name(), reason)
        .await
        .map_err(|e| from_problem(e.into()))?;
    back_to(&app, &env)
}

/// The question Abort asks first, naming the rollout and what becomes of it.
#[derive(Template)]
#[template(path = "abort_canary.html")]
struct AbortPage {
    layout: Layout,
    app: String,
    env: String,
    canary: String,
    stable: String,
    promotion_id: shipgate_core::PromotionId,
    now: String,
    action: String,
    back: String,
}

async fn question(state: &AppState, viewer: &Viewer, app: &AppName, env: &EnvName) -> Page {
    let view = state
        .engine
        .canary_status(app, env)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(html(&AbortPage {
        layout: Layout::new(
            viewer,
            format!("Abort the canary of {app} in {env}?"),
            "board",
        ),
        app: app.to_string(),
        env: env.to_string(),
        now: now(&view),
        canary: view.canary,
        stable: view.stable,
        promotion_id: view.promotion_id,
        action: format!(
            "{}/canary/abort",
            environment_link(app.as_str(), env.as_str())
        ),
        back: environment_link(app.as_str(), env.as_str()),
    }))
}

/// The panel's Abort button: asks before the rollout ends.
pub(crate) async fn ask_to_abort(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env)): Path<(String, String)>,
) -> Page {
    let (app, env) = target(&state, &viewer, &app, &env, Action::Rollback)?;
    question(&state, &viewer, &app, &env).await
}

/// The question's form: `confirm` names the promotion whose canary the viewer agreed to abort.
#[derive(Deserialize)]
pub(crate) struct AbortForm {
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// The question's answer: aborts the rollout it named and goes back to the environment. A post
/// that names no rollout, or another than the one under way, gets the question again.
pub(crate) async fn abort(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env)): Path<(String, String)>,
    Form(f): Form<AbortForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let (app, env) = target(&state, &viewer, &app, &env, Action::Rollback)?;
    let under_way = state
        .engine
        .canary_status(&app, &env)
        .await
        .map_err(|e| from_problem(e.into()))?;
    if f.confirm != under_way.promotion_id.to_string() {
        return question(&state, &viewer, &app, &env).await;
    }
    state
        .engine
        .canary_abort(&app, &env, viewer.caller.name())
        .await
        .map_err(|e| from_problem(e.into()))?;
    back_to(&app, &env)
}
