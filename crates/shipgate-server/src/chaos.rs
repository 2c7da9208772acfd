//! `/api/v1/chaos`: HTTP faults injected into an environment's router (deployer of it, and an
//! admin at the end of the flow), listed, and cleared before their end.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use shipgate_api::answers::{ProxyFaultView, TrafficProbe};
use shipgate_api::requests::{ChaosQuery, ChaosRequest, TrafficProbeQuery};
use shipgate_core::Action;
use shipgate_core::chaos::{FaultAction, FaultAsk};
use shipgate_store::FaultRecord;

use crate::AppState;
use crate::api::{app_name, env_name};
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

fn refused(detail: String) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "fault refused", detail)
}

fn millis(what: &str, s: &str) -> ApiResult<u64> {
    shipgate_core::Duration::parse(s)
        .map(|d| d.as_std().as_millis() as u64)
        .map_err(|e| refused(format!("{what}: {e}")))
}

/// `POST /api/v1/chaos`.
pub(crate) async fn inject(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ChaosRequest>,
) -> ApiResult<impl IntoResponse> {
    let env = env_name(&req.env)?;
    caller.allow(Action::Promote, Some(&env))?;
    let app = app_name(&req.app)?;
    let action = match (req.abort, req.delay.as_deref()) {
        (Some(status), None) if req.jitter.is_none() => FaultAction::Abort { status },
        (None, Some(delay)) => FaultAction::Delay {
            delay_ms: millis("delay", delay)?,
            jitter_ms: req
                .jitter
                .as_deref()
                .map(|j| millis("jitter", j))
                .transpose()?
                .unwrap_or(0),
        },
        _ => {
            return Err(refused(
                "give either abort (a status, --abort 503) or delay (--delay 300ms, with an optional --jitter)".into(),
            ));
        }
    };
    let duration = shipgate_core::Duration::parse(&req.duration)
        .map_err(|e| refused(format!("duration: {e} (--duration 5m)")))?;
    let ask = FaultAsk {
        env: &env,
        app: &app,
        action,
        percent: req.percent.unwrap_or(100.0),
        path: req.path.as_deref(),
        header: req.header.as_deref(),
        duration: duration.as_std(),
    };
    let record = state.engine.inject_fault(caller.grant(), ask).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// `GET /api/v1/chaos`: the faults in force (every one with `all`) where the token sees.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ChaosQuery>,
) -> ApiResult<Json<Vec<FaultRecord>>> {
    caller.allow(Action::Read, None)?;
    let env = q.env.as_deref().map(env_name).transpose()?;
    let app = q.app.as_deref().map(app_name).transpose()?;
    let faults = state
        .engine
        .store()
        .faults(env.as_ref(), !q.all)
        .await
        .map_err(shipgate_engine::EngineError::from)?;
    Ok(Json(
        faults
            .into_iter()
            .filter(|f| caller.sees(Some(f.env.as_str())))
            .filter(|f| app.as_ref().is_none_or(|a| f.app == *a))
            .filter(|f| q.id.is_none_or(|id| f.id == id))
            .collect(),
    ))
}

/// `GET /api/v1/chaos/proxies`: the toxics and downed dependency proxies in force, where the
/// token sees.
pub(crate) async fn proxies(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ProxyFaultView>>> {
    caller.allow(Action::Read, None)?;
    Ok(Json(
        state
            .engine
            .proxy_faults()
            .into_iter()
            .filter(|f| caller.sees(Some(f.env.as_str())))
            .map(|f| ProxyFaultView {
                proxy: f.proxy,
                env: f.env,
                toxic: f.toxic,
                created_by: f.held.by,
                ends_at: f.held.until,
            })
            .collect(),
    ))
}

/// `DELETE /api/v1/chaos`: end the faults in force that match, before their end (deployer of
/// their environment).
pub(crate) async fn clear(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ChaosQuery>,
) -> ApiResult<Json<Vec<FaultRecord>>> {
    let env = q.env.as_deref().map(env_name).transpose()?;
    caller.allow(Action::Promote, env.as_ref())?;
    let app = q.app.as_deref().map(app_name).transpose()?;
    Ok(Json(
        state
            .engine
            .clear_faults(caller.grant(), env.as_ref(), app.as_ref(), q.id)
            .await?,
    ))
}

/// `GET /api/v1/probe/traffic`: 200 when the app's traffic in the environment is within the
/// limits asked, 503 when not (for experiments' probes, whose tolerance is 200).
pub(crate) async fn probe_traffic(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TrafficProbeQuery>,
) -> ApiResult<impl IntoResponse> {
    let env = env_name(&q.env)?;
    caller.allow(Action::Read, Some(&env))?;
    let app = app_name(&q.app)?;
    let apps = state.engine.status(Some(&app)).await?;
    let Some(cell) = apps
        .into_iter()
        .flat_map(|a| a.environments)
        .find(|e| e.env == env)
    else {
        return Err(shipgate_engine::EngineError::UnknownEnvironment(q.env.clone()).into());
    };
    let traffic = cell.traffic;
    let mut beyond = Vec::new();
    if let (Some(max), Some(t)) = (q.max_error_rate, &traffic)
        && t.error_rate > max
    {
        beyond.push(format!("error rate {:.4} is above {max}", t.error_rate));
    }
    if let (Some(max), Some(p99)) = (q.max_p99_ms, traffic.as_ref().and_then(|t| t.p99_ms))
        && p99 > max
    {
        beyond.push(format!("p99 {p99:.1}ms is above {max}ms"));
    }
    let within = beyond.is_empty();
    let status = if within {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((
        status,
        Json(TrafficProbe {
            within,
            traffic,
            beyond,
        }),
    ))
}
