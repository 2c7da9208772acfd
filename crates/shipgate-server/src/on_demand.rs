//! `/api/v1/envs`: on-demand environments made from templates, listed, extended and deleted.
//! Each call is judged by the token's role and scope on the environment's name, so a token
//! limited to `preview-*` manages those alone.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use shipgate_api::answers::OnDemandView;
use shipgate_api::requests::{ExtendRequest, OnDemandRequest};
use shipgate_core::{Action, EnvName, ReleaseRef};
use shipgate_engine::on_demand::NewOnDemand;
use shipgate_store::OnDemandRecord;

use crate::AppState;
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

fn ttl(s: &str) -> ApiResult<shipgate_core::Duration> {
    shipgate_core::Duration::parse(s)
        .ok()
        .filter(|d| !d.as_std().is_zero())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid ttl",
                format!(
                    "ttl: `{s}` is not a duration above 0; write one such as \"24h\" or \"90m\""
                ),
            )
        })
}

/// How `r` is shown, with what is live in it and the time left.
pub(crate) async fn view(state: &AppState, r: OnDemandRecord) -> ApiResult<OnDemandView> {
    let (url, named_url) = state.engine.on_demand_urls(&r);
    let live = state
        .engine
        .store()
        .live(None)
        .await
        .map_err(shipgate_engine::EngineError::from)?
        .into_iter()
        .filter(|l| l.env == r.name)
        .map(|l| ReleaseRef {
            app: l.app,
            version: l.version,
        })
        .collect();
    let left = r.expires_at.duration_since(jiff::Timestamp::now());
    // Rounded up, so 0 (shown as `due`) means the expiry has passed, not that under a second is left.
    let whole_secs = left.as_secs() + i64::from(left.subsec_nanos() > 0);
    Ok(OnDemandView {
        expires_in_secs: u64::try_from(whole_secs).unwrap_or(0),
        record: r,
        url,
        named_url,
        live,
    })
}

pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<OnDemandRequest>,
) -> ApiResult<impl IntoResponse> {
    let env = crate::api::env_name(&req.name)?;
    caller.allow(Action::OnDemand, Some(&env))?;
    let template = EnvName::parse(&req.template)
        .map_err(|e| Problem::bad_request(format!("template: {e}")))?;
    let releases = req
        .releases
        .iter()
        .map(|r| ReleaseRef::parse(r).map_err(|e| Problem::bad_request(format!("release: {e}"))))
        .collect::<ApiResult<Vec<_>>>()?;
    let ttl = req.ttl.as_deref().map(ttl).transpose()?;
    let record = state
        .engine
        .create_on_demand(
            NewOnDemand {
                name: env,
                template,
                releases,
                ttl,
            },
            caller.name(),
        )
        .await?;
    let location = format!("/api/v1/envs/{}", record.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view(&state, record).await?),
    ))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let mut out = Vec::new();
    for r in state.engine.on_demand().await? {
        if caller.sees(Some(r.name.as_str())) {
            out.push(view(&state, r).await?);
        }
    }
    Ok(Json(out))
}

pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(env): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let env = crate::api::env_name(&env)?;
    caller.allow(Action::Read, Some(&env))?;
    let r = state.engine.on_demand_env(&env).await?;
    Ok(Json(view(&state, r).await?))
}

pub(crate) async fn extend(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(env): ApiPath<String>,
    ApiJson(req): ApiJson<ExtendRequest>,
) -> ApiResult<impl IntoResponse> {
    let env = crate::api::env_name(&env)?;
    caller.allow(Action::OnDemand, Some(&env))?;
    let r = state
        .engine
        .extend_on_demand(&env, ttl(&req.ttl)?, caller.name())
        .await?;
    Ok(Json(view(&state, r).await?))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(env): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let env = crate::api::env_name(&env)?;
    caller.allow(Action::OnDemand, Some(&env))?;
    let before = view(&state, state.engine.on_demand_env(&env).await?).await?;
    state.engine.delete_on_demand(&env, caller.name()).await?;
    Ok(Json(before))
}
