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
        Some(d) => {
            let parsed = shipgate_core::Duration::parse(d).map_err(|e| {
                Problem::bad_request(format!("duration: `{d}` is not a duration (10s, 2m): {e}"))
            })?;
            let d = parsed.as_std();
            if d.is_zero() || d.as_secs() > 3600 {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "load refused",
                    format!(
                        "a load run lasts from 1 ms to 1 h, not {parsed}; for longer, run it again"
                    ),
                ));
            }
            Some(d)
        }
        None => None,
    };
    let rate = match b.rate {
        Some(r) if r.fract() == 0.0 && (1.0..=1_000_000.0).contains(&r) => Some(r as u32),
        Some(r) => {
            return Err(Problem::bad_request(format!(
                "rate: {r} is not a whole number of requests per second from 1 to 1000000"
            )));
        }
        None => None,
    };
    let (run, report) = state
        .engine
        .load_run(&app, &env, caller.grant(), rate, duration, b.baseline)
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
