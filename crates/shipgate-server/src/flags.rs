//! Feature flags over HTTP: `/api/v1/flags` and `/api/v1/flag-keys` for people and CI (API
//! tokens, roles and scopes), and the OFREP server at `/ofrep/v1/` for OpenFeature clients,
//! which send a flag client key (`X-API-Key` or `Authorization: Bearer`) that selects one
//! environment: single and bulk evaluation (with `ETag` / `If-None-Match`), and change events
//! over SSE (`refetchEvaluation`).

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{Map, Value, json};
use shipgate_api::answers::{CreatedFlagKey, FlagPromotion, FlagView};
use shipgate_api::records::FlagChangeRecord;
use shipgate_api::requests::{
    FlagChangesQuery, FlagDecisionRequest, FlagKeyRequest, FlagPromoteRequest, FlagsQuery,
    SetFlagRequest,
};
use shipgate_core::{Action, EnvName, EventKind};

use shipgate_engine::flags::{FlagOutcome, Flags};

use crate::AppState;
use crate::api::{app_name, env_name};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

fn views(flags: Flags) -> Vec<FlagView> {
    flags
        .flags
        .into_iter()
        .map(|(key, (app, config, state))| FlagView {
            app,
            flag: key,
            env: flags.env.clone(),
            kind: config.kind,
            description: config.description.clone(),
            variants: serde_json::to_value(&config.variants).unwrap_or(Value::Null),
            default_variant: config.default_variant.clone(),
            summary: state.to_string(),
            state,
        })
        .collect()
}

/// `GET /api/v1/flags`: each declared flag's state in each environment the token sees.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<FlagsQuery>,
) -> ApiResult<Json<Vec<FlagView>>> {
    caller.allow(Action::Read, None)?;
    let config = state.engine.config();
    let envs: Vec<EnvName> = match &q.env {
        Some(e) => {
            let env = env_name(e)?;
            caller.allow(Action::Read, Some(&env))?;
            if config.environment(&env).is_none() {
                return Err(shipgate_engine::EngineError::UnknownEnvironment(e.clone()).into());
            }
            vec![env]
        }
        None => config.environments.iter().map(|e| e.name.clone()).collect(),
    };
    let mut all = Vec::new();
    for env in envs.into_iter().filter(|e| caller.sees(Some(e.as_str()))) {
        all.extend(views(state.engine.flags_of(&env).await?));
    }
    Ok(Json(all))
}

/// `POST /api/v1/flags`: set one flag's state in one environment (deployer of it, or admin):
/// 200 with the flag as it is now, or 202 with the change when it waits for approvals.
pub(crate) async fn set(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SetFlagRequest>,
) -> ApiResult<Response> {
    let env = env_name(&req.env)?;
    caller.allow(Action::Promote, Some(&env))?;
    let app = app_name(&req.app)?;
    let outcome = state
        .engine
        .set_flag(caller.grant(), &env, &app, &req.flag, req.state)
        .await?;
    if let FlagOutcome::Waiting(change) = outcome {
        return Ok((
            StatusCode::ACCEPTED,
            [change_location(&change)],
            Json(change),
        )
            .into_response());
    }
    let view = views(state.engine.flags_of(&env).await?)
        .into_iter()
        .find(|v| v.flag == req.flag)
        .ok_or_else(|| Problem::bad_request("the flag is no longer declared"))?;
    Ok(Json(view).into_response())
}

fn change_location(change: &FlagChangeRecord) -> (header::HeaderName, String) {
    (
        header::LOCATION,
        format!("/api/v1/flag-changes/{}", change.id),
    )
}

/// `POST /api/v1/flags/promote`: give one environment another's flag states of an app, as one
/// change (deployer of the target, or admin).
pub(crate) async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<FlagPromoteRequest>,
) -> ApiResult<Json<FlagPromotion>> {
    let (from, to) = (env_name(&req.from)?, env_name(&req.to)?);
    caller.allow(Action::Read, Some(&from))?;
    // A dry run shows the target's flag states, so it needs the right to read them.
    caller.allow(
        if req.dry_run {
            Action::Read
        } else {
            Action::Promote
        },
        Some(&to),
    )?;
    let app = app_name(&req.app)?;
    let (changes, outcome) = state
        .engine
        .promote_flags(
            caller.grant(),
            &app,
            &from,
            &to,
            req.flag.as_deref(),
            req.dry_run,
        )
        .await?;
    let waiting = match outcome {
        FlagOutcome::Waiting(change) => Some(change),
        FlagOutcome::Applied => None,
    };
    Ok(Json(FlagPromotion {
        applied: !req.dry_run && !changes.is_empty() && waiting.is_none(),
        app,
        from,
        to,
        changes,
        waiting,
    }))
}

/// `GET /api/v1/flag-changes`: the flag changes waiting for approvals (every one with `all`)
/// in the environments the token sees.
pub(crate) async fn list_changes(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<FlagChangesQuery>,
) -> ApiResult<Json<Vec<FlagChangeRecord>>> {
    caller.allow(Action::Read, None)?;
    let env = q.env.as_deref().map(env_name).transpose()?;
    if let Some(env) = &env {
        caller.allow(Action::Read, Some(env))?;
    }
    let changes = state
        .engine
        .store()
        .flag_changes(env.as_ref(), !q.all)
        .await
        .map_err(shipgate_engine::EngineError::from)?;
    Ok(Json(
        changes
            .into_iter()
            .filter(|c| caller.sees(Some(c.env.as_str())))
            .collect(),
    ))
}

/// `POST /api/v1/flag-changes/{id}/decisions`: approve or reject a waiting flag change
/// (approver of its environment, or admin); the approval that completes the count applies it.
pub(crate) async fn decide_change(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<FlagDecisionRequest>,
) -> ApiResult<Json<FlagChangeRecord>> {
    let env = state
        .engine
        .store()
        .flag_change(id)
        .await
        .map_err(shipgate_engine::EngineError::from)?
        .map(|c| c.env);
    caller.allow(Action::Approve, env.as_ref())?;
    let comment = req
        .comment
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    Ok(Json(
        state
            .engine
            .decide_flag_change(caller.grant(), id, req.verdict, comment)
            .await?,
    ))
}

/// `POST /api/v1/flag-keys`: make a client key for one environment (admin).
pub(crate) async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<FlagKeyRequest>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageTokens, None)?;
    let env = env_name(&req.env)?;
    let (record, key) = state
        .engine
        .create_flag_key(caller.grant(), &req.name, &env)
        .await?;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/flag-keys/{}", record.name),
        )],
        Json(CreatedFlagKey { key, record }),
    ))
}

/// `GET /api/v1/flag-keys`: every flag key, revoked ones too (admin).
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageTokens, None)?;
    Ok(Json(
        state
            .engine
            .store()
            .flag_keys()
            .await
            .map_err(shipgate_engine::EngineError::from)?,
    ))
}

/// `DELETE /api/v1/flag-keys/{name}`: revoke a flag key (admin); clients using it get 401.
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageTokens, None)?;
    Ok(Json(
        state.engine.revoke_flag_key(caller.grant(), &name).await?,
    ))
}

/// The OFREP routes, which take flag client keys rather than API tokens.
pub(crate) fn ofrep_routes() -> Router<AppState> {
    Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_one))
        .route("/ofrep/v1/evaluate/flags", post(evaluate_all))
        .route("/ofrep/v1/events", get(events))
}

/// What OFREP answers instead of an evaluation: a status and, for 400 and 404, OFREP's error
/// body (401 has none).
struct Refusal(StatusCode, Option<Value>);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self.1 {
            Some(body) => (self.0, Json(body)).into_response(),
            None => self.0.into_response(),
        }
    }
}

fn unauthorized() -> Refusal {
    Refusal(StatusCode::UNAUTHORIZED, None)
}

/// The environment the request's flag key selects, or the answer to give.
async fn client_env(state: &AppState, headers: &HeaderMap) -> Result<EnvName, Refusal> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let key = text(header::HeaderName::from_static("x-api-key"))
        .or_else(|| text(header::AUTHORIZATION).and_then(|a| a.strip_prefix("Bearer ")))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    match state.engine.env_of_flag_key(key).await {
        Ok(Some(env)) if state.engine.config().environment(&env).is_some() => Ok(env),
        Ok(_) => Err(unauthorized()),
        Err(e) => {
            tracing::warn!("checking a flag key: {e}");
            Err(Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(json!({ "errorDetails": e.to_string() })),
            ))
        }
    }
}

/// The evaluation context of an OFREP request body (`{"context": {...}}`), or the 400.
fn context(body: &[u8], key: Option<&str>) -> Result<Map<String, Value>, Refusal> {
    let parse_error = |details: String| {
        let mut answer = json!({ "errorCode": "PARSE_ERROR", "errorDetails": details });
        if let Some(key) = key {
            answer["key"] = json!(key);
        }
        Refusal(StatusCode::BAD_REQUEST, Some(answer))
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| parse_error(format!("the body is not JSON: {e}")))?;
    match value.get("context") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(c)) => Ok(c.clone()),
        Some(_) => Err(parse_error("`context` must be an object".into())),
    }
}

/// One flag's OFREP answer: the evaluation, or its error with the status it goes with.
fn answer(flags: &Flags, key: &str, ctx: &Map<String, Value>) -> (StatusCode, Value) {
    match flags.evaluate(key, ctx) {
        None => (
            StatusCode::NOT_FOUND,
            json!({ "key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": format!("no app declares flag `{key}`") }),
        ),
        Some(Ok(e)) => (
            StatusCode::OK,
            json!({ "key": key, "value": e.value, "reason": e.reason, "variant": e.variant, "metadata": { "environment": flags.env.as_str() } }),
        ),
        Some(Err(e)) => (
            StatusCode::BAD_REQUEST,
            json!({ "key": key, "errorCode": e.code(), "errorDetails": e.to_string() }),
        ),
    }
}

async fn evaluate_one(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match opening(&state, &headers, &body, Some(&key)).await {
        Ok((flags, ctx)) => {
            let (status, body) = answer(&flags, &key, &ctx);
            (status, Json(body)).into_response()
        }
        Err(r) => r,
    }
}

/// What both evaluations start with: the environment the client key selects, the evaluation
/// context of the body, and that environment's flags; or the answer that refuses the request.
async fn opening(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&str>,
) -> Result<(std::sync::Arc<Flags>, Map<String, Value>), Response> {
    let env = client_env(state, headers)
        .await
        .map_err(IntoResponse::into_response)?;
    let ctx = context(body, key).map_err(IntoResponse::into_response)?;
    let flags = state
        .engine
        .cached_flags(&env)
        .await
        .map_err(|e| Problem::from(e).into_response())?;
    Ok((flags, ctx))
}

async fn evaluate_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (flags, ctx) = match opening(&state, &headers, &body, None).await {
        Ok(opened) => opened,
        Err(r) => return r,
    };
    // What a client was served depends on its context as much as on the flags.
    let etag = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(flags.etag());
        h.update(serde_json::to_string(&ctx).unwrap_or_default());
        format!("\"{}\"", &hex::encode(h.finalize())[..32])
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let answers: Vec<Value> = flags
        .flags
        .keys()
        .map(|key| answer(&flags, key, &ctx).1)
        .collect();
    let body = json!({
        "flags": answers,
        "eventStreams": [{ "type": "sse", "url": format!("{}/ofrep/v1/events", base_url(&state)) }],
    });
    ([(header::ETAG, etag)], Json(body)).into_response()
}

/// The API's address from the config (`public_url`, else `listen`), never from the request's
/// `Host` (which a client, or a page through DNS rebinding, chooses): clients send their key to
/// this URL.
fn base_url(state: &AppState) -> String {
    let config = state.engine.config();
    config.server.public_url.clone().unwrap_or_else(|| {
        state
            .engine
            .api_url()
            .unwrap_or_else(|| format!("http://{}", config.server.listen))
    })
}

/// `GET /ofrep/v1/events`: a `refetchEvaluation` message each time a flag of the key's
/// environment changes (the event-stream ADR of the OFREP protocol).
async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let env = match client_env(&state, &headers).await {
        Ok(env) => env,
        Err(r) => return r.into_response(),
    };
    sse(&state, env).into_response()
}

fn sse(
    state: &AppState,
    env: EnvName,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>> {
    crate::api::events_as_sse(state, move |e| {
        if e.kind != EventKind::FlagChanged || e.env.as_deref() != Some(env.as_str()) {
            return None;
        }
        let data = json!({
            "type": "refetchEvaluation",
            "etag": format!("\"{}\"", e.hash),
            "lastModified": e.at.as_second(),
        });
        Some(
            SseEvent::default()
                .id(e.id.to_string())
                .event("message")
                .data(data.to_string()),
        )
    })
}
