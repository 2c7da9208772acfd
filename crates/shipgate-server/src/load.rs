//! `/api/v1/load`: a load test against what an environment serves now (a deployer of it; at
//! the end of the flow an admin, with `load.allow`), and the runs recorded there.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use shipgate_api::answers::LoadReport;
use shipgate_api::requests::{AppEnv, LoadRequestBody};
use shipgate_core::Action;
use shipgate_store::LoadRun;

use crate::AppState;
use crate::api::{app_name, env_name};
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

/// `POST /api/v1/load`: answers once the run ended.
pub(crate) async fn run(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<LoadRequestBody>,
) -> ApiResult<impl IntoResponse> {
    let env = env_name(&b.env)?;
    caller.allow(Action::Promote, Some(&env))?;
    let app = app_name(&b.app)?;
    let duration = match b.duration.as_deref() {
        Some(d) => Some(
            shipgate_core::Duration::parse(d)
                .ok()
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero() && d.as_secs() <= 3600)
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "duration: `{d}` is not a duration from 1s to 1h (10s, 2m)"
                    ))
                })?,
        ),
        None => None,
    };
    let (run, report) = state
        .engine
        .load_run(&app, &env, caller.grant(), b.rate, duration, b.baseline)
        .await?;
    Ok((StatusCode::CREATED, Json(LoadReport { run, report })))
}

/// `GET /api/v1/load`: the runs of an app in an environment, newest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AppEnv>,
) -> ApiResult<Json<Vec<LoadRun>>> {
    let env = env_name(&q.env)?;
    caller.allow(Action::Read, Some(&env))?;
    let app = app_name(&q.app)?;
    Ok(Json(
        state
            .engine
            .store()
            .load_runs(&app, &env)
            .await
            .map_err(shipgate_engine::EngineError::from)?,
    ))
}
