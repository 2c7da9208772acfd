//! The `/api/v1/` routes.

use std::convert::Infallible;

use axum::body::{Body, BodyDataStream};
use axum::extract::State;
use axum::http::Method;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{MethodFilter, MethodRouter, get, on};
use axum::{Json, Router, middleware};
use futures_util::{Stream, StreamExt};
use shipgate_api::answers::{CreatedRelease, CreatedToken, DataCheck, DecisionRecorded, LogChunk};
use shipgate_api::requests::{
    AppEnv, AppQuery, DataRefreshRequest, DecisionRequest, DiffQuery, EventOrder, EventsQuery,
    FreezeQuery, FreezeRequest, HistoryQuery, LogsQuery, PromoteRequest, ReleaseQuery,
    RollbackRequest, TokenRequest,
};
use shipgate_core::{Action, AppName, Digest, EnvName, ReleaseRef, Version};
use shipgate_engine::flow::ReleaseRequest;
use shipgate_engine::image::ImageSource;
use shipgate_store::artifact::{ArtifactError, UnpackLimits};
use shipgate_store::{EventFilter, NewToken, Release, verify_chain};

use crate::AppState;
use crate::auth::require_token;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::problem::Problem;

/// The actor of changes the server makes by itself.
pub(crate) const SYSTEM: &str = shipgate_engine::SYSTEM;

type ApiResult<T> = Result<T, Problem>;

/// After an upload is refused for its size, how long and how much of the rest of its body is
/// still read and dropped. The answer goes out at once; reading on a little keeps a client that
/// is still sending from meeting a reset connection before it reads the answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 << 20;

/// The endpoints under `/api/v1`: method, path and handler, in one place, so the OpenAPI
/// document can be checked against them.
macro_rules! endpoints {
    ($($method:ident $path:literal => $handler:expr),* $(,)?) => {
        vec![$((Method::$method, $path, on(MethodFilter::$method, $handler))),*]
    };
}

fn endpoints() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    endpoints![
        POST "/apps/{app}/releases" => create_release,
        GET "/releases" => list_releases,
        GET "/apps/{app}/releases/{version}" => show_release,
        POST "/promotions" => promote,
        GET "/promotions/{id}" => promotion,
        POST "/rollbacks" => rollback,
        GET "/canary" => canary_status,
        POST "/canary/resume" => canary_resume,
        POST "/canary/skip" => canary_skip,
        POST "/canary/abort" => canary_abort,
        POST "/approvals" => decide,
        GET "/signoffs" => signoff_status,
        POST "/backups" => crate::backup::create,
        GET "/backups" => crate::backup::list,
        GET "/backups/{id}" => crate::backup::show,
        POST "/backups/{id}/restore" => crate::backup::restore,
        POST "/backups/{id}/drill" => crate::backup::drill,
        POST "/load" => crate::load::run,
        GET "/load" => crate::load::list,
        PUT "/secrets/{env}/{name}" => crate::secrets::set,
        DELETE "/secrets/{env}/{name}" => crate::secrets::remove,
        GET "/secrets/{env}" => crate::secrets::list,
        GET "/secrets-recipient" => crate::secrets::recipient,
        POST "/signoffs" => sign_off,
        GET "/diff" => diff,
        POST "/data/refresh" => refresh_data,
        GET "/data/check" => check_data,
        GET "/drift" => drift,
        POST "/drift/heal" => heal,
        GET "/freezes" => list_freezes,
        POST "/freezes" => freeze,
        DELETE "/freezes" => unfreeze,
        GET "/status" => status,
        GET "/history" => history,
        GET "/logs" => logs,
        GET "/events" => events,
        GET "/events/stream" => event_stream,
        GET "/audit/verify" => verify_audit,
        GET "/openapi.json" => openapi,
        POST "/tokens" => create_token,
        GET "/tokens" => list_tokens,
        GET "/hosts" => list_hosts,
        GET "/leader" => leader,
        POST "/hosts" => add_host,
        POST "/reload" => reload,
        POST "/gc" => gc,
        DELETE "/hosts/{name}" => remove_host,
        DELETE "/tokens/{name}" => revoke_token,
        POST "/envs" => crate::on_demand::create,
        GET "/envs" => crate::on_demand::list,
        GET "/envs/{name}" => crate::on_demand::show,
        POST "/envs/{name}/extend" => crate::on_demand::extend,
        DELETE "/envs/{name}" => crate::on_demand::delete,
        GET "/flags" => crate::flags::list,
        POST "/flags" => crate::flags::set,
        POST "/flags/promote" => crate::flags::promote,
        GET "/flag-changes" => crate::flags::list_changes,
        POST "/chaos" => crate::chaos::inject,
        GET "/chaos" => crate::chaos::list,
        DELETE "/chaos" => crate::chaos::clear,
        GET "/chaos/proxies" => crate::chaos::proxies,
        GET "/probe/traffic" => crate::chaos::probe_traffic,
        GET "/notify" => crate::notify::list,
        GET "/dora" => crate::dora::dora,
        POST "/notify/retry" => crate::notify::retry,
        POST "/notify/test" => crate::notify::test,
        POST "/flag-changes/{id}/decisions" => crate::flags::decide_change,
        POST "/flag-keys" => crate::flags::create_key,
        GET "/flag-keys" => crate::flags::list_keys,
        DELETE "/flag-keys/{name}" => crate::flags::revoke_key,
    ]
}

/// The endpoints under `/api/v1` that need no token: signing in is how one gets one.
fn open_endpoints() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    endpoints![
        POST "/auth/login" => crate::oidc::cli::login,
        POST "/auth/token" => crate::oidc::cli::token,
    ]
}

/// The OpenAPI 3.1 document describing [`endpoints`], `/healthz` and `/metrics`, derived from
/// the wire types once.
static OPENAPI: std::sync::LazyLock<String> = std::sync::LazyLock::new(crate::openapi::document);

pub(crate) fn routes(state: AppState) -> Router {
    let api = endpoints()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let api = open_endpoints()
        .into_iter()
        .fold(api, |router, (_, path, handler)| {
            router.route(path, handler)
        })
        // An agent joining has its one-time token, not an API token; where to dial is no secret.
        .route("/hosts/join", axum::routing::post(join_host))
        .route("/hosts/endpoint", get(agent_endpoint))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no such endpoint",
                "the endpoints under /api/v1/ are described at /api/v1/openapi.json",
            )
        });
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .merge(metrics)
        .merge(crate::flags::ofrep_routes())
        .merge(crate::ui::routes())
        .with_state(state)
}

/// Request metrics of every environment in the Prometheus text format.
async fn metrics(State(state): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let mut all = state.engine.request_metrics().await;
    all.retain(|(env, _)| caller.sees(Some(env)));
    let text = shipgate_proxy::render_prometheus(&all);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    ))
}

async fn openapi(caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI.as_str(),
    ))
}

/// An app name from a request that the config knows.
fn configured_app(state: &AppState, s: &str) -> ApiResult<AppName> {
    let app = app_name(s)?;
    if state.engine.config().app(&app).is_none() {
        return Err(shipgate_engine::EngineError::UnknownApp(app.to_string()).into());
    }
    Ok(app)
}

/// An app of the config and an environment named in a request.
fn app_in_env(state: &AppState, app: &str, env: &str) -> ApiResult<(AppName, EnvName)> {
    Ok((
        configured_app(state, app)?,
        parse("environment", env, EnvName::parse)?,
    ))
}

/// An optional query parameter, parsed when present.
fn optional<T>(
    what: &str,
    s: Option<&str>,
    f: impl FnOnce(&str) -> Result<T, shipgate_core::NameError>,
) -> ApiResult<Option<T>> {
    s.map(|s| parse(what, s, f)).transpose()
}

/// An environment's name from a request, refused (400) with what is wrong.
pub(crate) fn env_name(s: &str) -> ApiResult<EnvName> {
    parse("environment", s, EnvName::parse)
}

/// An app's name from a request, refused (400) with what is wrong.
pub(crate) fn app_name(s: &str) -> ApiResult<AppName> {
    parse("app", s, AppName::parse)
}

pub(crate) fn parse<T>(
    what: &str,
    s: &str,
    f: impl FnOnce(&str) -> Result<T, shipgate_core::NameError>,
) -> ApiResult<T> {
    f(s).map_err(|e| Problem::bad_request(format!("{what}: {e}")))
}

async fn create_release(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(app): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReleaseQuery>,
    headers: axum::http::HeaderMap,
    // Read as a raw stream: axum's 2 MB default body limit does not apply, `max_artifact_size` does.
    body: Body,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::RegisterRelease, None)?;
    let app = configured_app(&state, &app)?;
    let version = parse("version", &q.version, Version::parse)?;
    let claimed = parse("digest", &q.digest, Digest::parse)?;
    let engine = &state.engine;
    let limit = engine.config().server.max_artifact_size;
    let mut stream = body.into_data_stream();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let commit_time = q
        .commit_time
        .as_deref()
        .map(|t| {
            t.parse::<jiff::Timestamp>().map_err(|e| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid commit time",
                    format!("commit_time: `{t}` is not an RFC 3339 time: {e}"),
                )
            })
        })
        .transpose()?;
    let request = ReleaseRequest {
        release: ReleaseRef { app, version },
        commit: q.commit,
        commit_time,
        notes: q.notes,
    };
    let reference = match &q.image {
        Some(r) => Some(shipgate_core::image::ImageRef::parse(r).map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid image reference",
                format!("image: {e}"),
            )
        })?),
        None => None,
    };
    if let Some(registry @ shipgate_core::image::ImageRef::Registry { .. }) = &reference {
        // Pulled by the server, with the credentials its config names: nothing to upload.
        if declared.is_some_and(|length| length > 0) {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a registry's image is pulled by the server",
                "send no body with a registry reference; the server pulls it".to_owned(),
            ));
        }
        let (release, created) = engine
            .create_image_release(request, ImageSource::Pull(registry.clone()), caller.name())
            .await?;
        return Ok(created_answer(release, created));
    }
    if declared.is_some_and(|length| length > limit.0) {
        return Err(refused_for_size(stream, ArtifactError::TooLarge { limit }));
    }
    let mut upload = engine
        .artifacts()
        .upload(limit, UnpackLimits::of(&engine.config().server))
        .await?;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Problem::bad_request(format!("the upload was cut off: {e}")))?;
        if let Err(e) = upload.write(&chunk).await {
            return Err(match e {
                ArtifactError::TooLarge { .. } => refused_for_size(stream, e),
                other => other.into(),
            });
        }
    }
    let checked = if reference.is_some() {
        upload.finish_transient(&claimed).await?
    } else {
        upload.finish(&claimed).await?
    };
    let (release, created) = match reference {
        Some(reference) => {
            engine
                .create_image_release(
                    request,
                    ImageSource::Upload(checked, reference),
                    caller.name(),
                )
                .await?
        }
        None => {
            engine
                .create_release(request, checked, caller.name())
                .await?
        }
    };
    Ok(created_answer(release, created))
}

/// 201 with a release registered now, 200 with one that was already.
fn created_answer(release: Release, created: bool) -> (StatusCode, Json<CreatedRelease>) {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(CreatedRelease { release, created }))
}

/// The answer to an upload over `max_artifact_size`, given as soon as the limit is passed. The
/// rest of the body is read and dropped after it, in the background, for [`LINGER`] or
/// [`LINGER_BYTES`] at most; if more is left then, the connection closes unread.
fn refused_for_size(mut rest: BodyDataStream, e: ArtifactError) -> Problem {
    tokio::spawn(async move {
        let drain = async {
            let mut left = LINGER_BYTES;
            while let Some(Ok(chunk)) = rest.next().await {
                left = left.saturating_sub(chunk.len() as u64);
                if left == 0 {
                    break;
                }
            }
        };
        // By then the client has read the answer; what it still sends is not waited for.
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
    e.into()
}

async fn show_release(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((app, version)): ApiPath<(String, String)>,
) -> ApiResult<Json<shipgate_api::answers::ReleaseDetail>> {
    caller.allow(Action::Read, None)?;
    let app = configured_app(&state, &app)?;
    let version = parse("version", &version, Version::parse)?;
    Ok(Json(
        state
            .engine
            .release_detail(&ReleaseRef { app, version })
            .await?,
    ))
}

async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AppQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let app = optional("app", q.app.as_deref(), AppName::parse)?;
    Ok(Json(state.engine.store().releases(app.as_ref()).await?))
}

async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<PromoteRequest>,
) -> ApiResult<impl IntoResponse> {
    let release = parse("release", &b.release, ReleaseRef::parse)?;
    let env = parse("environment", &b.env, EnvName::parse)?;
    caller.allow(Action::Promote, Some(&env))?;
    if let Some(reason) = &b.override_reason {
        caller.allow(Action::Override, Some(&env))?;
        if reason.trim().is_empty() {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no reason",
                "an override needs a reason, recorded in the audit log (--override \"hotfix for incident 42\")",
            ));
        }
    }
    let promotion = match b.hotfix {
        Some(reason) => {
            if reason.trim().is_empty() {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "no reason",
                    "a hotfix needs a reason, recorded in the audit log (--hotfix --reason \"INC-2291 checkout 500s\")",
                ));
            }
            let lane = state
                .engine
                .config()
                .environment(&env)
                .and_then(|e| e.hotfix.clone());
            if let Some(lane) = lane
                && !caller.grant().has_role(lane.role, Some(&env))
                && !caller
                    .grant()
                    .has_role(shipgate_core::Role::Admin, Some(&env))
            {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "a hotfix into {env} needs the role {} (or admin); {} is a {}: ask someone who has it",
                        lane.role.as_str(),
                        caller.name(),
                        caller.grant().role.as_str()
                    ),
                ));
            }
            // An admin's override may come with it (a hotfix during a freeze).
            state
                .engine
                .hotfix(&release, &env, caller.name(), reason, b.override_reason)
                .await?
        }
        None => {
            state
                .engine
                .promote(&release, &env, caller.name(), b.override_reason)
                .await?
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, promotion_location(promotion.id))],
        Json(promotion),
    ))
}

/// Approves or rejects the promotion of a release into an environment.
async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<DecisionRequest>,
) -> ApiResult<impl IntoResponse> {
    let release = parse("release", &b.release, ReleaseRef::parse)?;
    let env = parse("environment", &b.env, EnvName::parse)?;
    caller.allow(Action::Approve, Some(&env))?;
    if b.comment.as_ref().is_some_and(|c| c.trim().is_empty()) {
        return Err(Problem::bad_request(
            "a comment says why in words; leave it out rather than send it blank",
        ));
    }
    let comment = b.comment;
    let (promotion, decision) = state
        .engine
        .decide(&release, &env, &caller.0, b.verdict, comment)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DecisionRecorded {
            promotion,
            decision,
        }),
    ))
}

/// A release's user acceptance sign-off in one environment.
async fn signoff_status(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<shipgate_api::requests::SignoffQuery>,
) -> ApiResult<Json<shipgate_api::answers::SignoffStatus>> {
    let release = parse("release", &q.release, ReleaseRef::parse)?;
    let env = parse("environment", &q.env, EnvName::parse)?;
    caller.allow(Action::Read, Some(&env))?;
    configured_app(&state, release.app.as_str())?;
    Ok(Json(state.engine.signoff_status(&release, &env).await?))
}

/// A tester passes or fails one scenario. The role is the environment's sign-off role (or
/// admin), checked with the sheet; a token must reach the environment.
async fn sign_off(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<shipgate_api::requests::SignoffRequest>,
) -> ApiResult<impl IntoResponse> {
    let release = parse("release", &b.release, ReleaseRef::parse)?;
    let env = parse("environment", &b.env, EnvName::parse)?;
    caller.allow(Action::Read, Some(&env))?;
    configured_app(&state, release.app.as_str())?;
    if b.note.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return Err(Problem::bad_request(
            "a note says what you saw in words; leave it out rather than send it blank",
        ));
    }
    let status = state
        .engine
        .sign_off(&release, &env, &caller.0, &b.scenario, b.verdict, b.note)
        .await?;
    Ok((StatusCode::CREATED, Json(status)))
}

/// Compares an app in two environments (runs the app's facts in both).
async fn diff(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DiffQuery>,
) -> ApiResult<impl IntoResponse> {
    let app = configured_app(&state, &q.app)?;
    let a = parse("environment", &q.a, EnvName::parse)?;
    let b = parse("environment", &q.b, EnvName::parse)?;
    caller.allow(Action::Read, Some(&a))?;
    caller.allow(Action::Read, Some(&b))?;
    Ok(Json(state.engine.diff(&app, &a, &b).await?))
}

/// Checks every live release for drift now.
async fn drift(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AppQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let app = optional("app", q.app.as_deref(), AppName::parse)?;
    let mut reports = state.engine.scan_drift().await?;
    reports
        .retain(|r| app.as_ref().is_none_or(|a| a == &r.app) && caller.sees(Some(r.env.as_str())));
    Ok(Json(reports))
}

/// Refreshes one environment's data from another, masked; answers with one JSON line per
/// progress report and a last line `{"done": ...}` or `{"failed": "..."}`.
async fn refresh_data(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<DataRefreshRequest>,
) -> ApiResult<impl IntoResponse> {
    let app = configured_app(&state, &b.app)?;
    let from = parse("environment", &b.from, EnvName::parse)?;
    let to = parse("environment", &b.to, EnvName::parse)?;
    caller.allow(Action::Read, Some(&from))?;
    caller.allow(Action::Read, Some(&to))?;
    let needed = state
        .engine
        .config()
        .app(&app)
        .and_then(|a| a.data.as_ref())
        .map_or(shipgate_core::Role::Admin, |d| d.role);
    let holds = |role| caller.0.has_role(role, Some(&from)) && caller.0.has_role(role, Some(&to));
    if !holds(shipgate_core::Role::Admin) && !holds(needed) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token `{}` has the role {}, which may not refresh data; use a token with the role {needed} or admin",
                caller.0.name, caller.0.role
            ),
        ));
    }
    let messages = state.engine.refresh_data(&app, &from, &to, &caller.0)?;
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(messages).map(|m| {
        let mut line = serde_json::to_vec(&m).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(bytes::Bytes::from(line))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    ))
}

/// An app in an environment, as a query or a body.
/// The leak check of one environment's masked data against the environment it comes from.
async fn check_data(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AppEnv>,
) -> ApiResult<impl IntoResponse> {
    let (app, env) = app_in_env(&state, &q.app, &q.env)?;
    caller.allow(Action::Read, Some(&env))?;
    let (from, report) = state.engine.check_data(&app, &env).await?;
    Ok(Json(DataCheck {
        app,
        env,
        from,
        leaked: report.leaked(),
        columns: report.columns,
    }))
}

/// Redeploys the recorded live release from its artifact.
async fn heal(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<AppEnv>,
) -> ApiResult<impl IntoResponse> {
    let (app, env) = app_in_env(&state, &b.app, &b.env)?;
    caller.allow(Action::Rollback, Some(&env))?;
    let promotion = state.engine.heal(&app, &env, caller.name()).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, promotion_location(promotion.id))],
        Json(promotion),
    ))
}

async fn freeze(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<FreezeRequest>,
) -> ApiResult<impl IntoResponse> {
    let env = optional("environment", b.env.as_deref(), EnvName::parse)?;
    caller.allow(Action::Freeze, env.as_ref())?;
    if b.reason.trim().is_empty() {
        return Err(Problem::bad_request(
            "a freeze needs a reason (--reason \"year-end change freeze\")",
        ));
    }
    let freeze = state
        .engine
        .freeze(env.as_ref(), b.reason.trim(), caller.name())
        .await?;
    Ok((StatusCode::CREATED, Json(freeze)))
}

async fn unfreeze(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<FreezeQuery>,
) -> ApiResult<impl IntoResponse> {
    let env = optional("environment", q.env.as_deref(), EnvName::parse)?;
    caller.allow(Action::Freeze, env.as_ref())?;
    Ok(Json(
        state.engine.unfreeze(env.as_ref(), caller.name()).await?,
    ))
}

async fn list_freezes(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let mut freezes = state.engine.store().freezes().await?;
    freezes.retain(|f| caller.sees(f.env.as_ref().map(EnvName::as_str)));
    Ok(Json(freezes))
}

async fn promotion(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<shipgate_core::PromotionId>,
) -> ApiResult<impl IntoResponse> {
    let entry = state.engine.promotion(id).await?;
    caller.allow(Action::Read, Some(&entry.promotion.env))?;
    Ok(Json(entry))
}

async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<RollbackRequest>,
) -> ApiResult<impl IntoResponse> {
    let app = parse("app", &b.app, AppName::parse)?;
    let env = parse("environment", &b.env, EnvName::parse)?;
    let to = optional("version", b.to.as_deref(), Version::parse)?;
    caller.allow(Action::Rollback, Some(&env))?;
    let promotion = state
        .engine
        .rollback(&app, &env, to.as_ref(), caller.name())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, promotion_location(promotion.id))],
        Json(promotion),
    ))
}

async fn canary_status(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AppEnv>,
) -> ApiResult<impl IntoResponse> {
    let (app, env) = app_in_env(&state, &q.app, &q.env)?;
    caller.allow(Action::Read, Some(&env))?;
    Ok(Json(state.engine.canary_status(&app, &env).await?))
}

/// A pause, or a step held for too few requests, goes on: a decision, as an approval is.
async fn canary_resume(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<AppEnv>,
) -> ApiResult<impl IntoResponse> {
    let (app, env) = app_in_env(&state, &b.app, &b.env)?;
    caller.allow(Action::Approve, Some(&env))?;
    Ok(Json(
        state
            .engine
            .canary_resume(&app, &env, caller.name())
            .await?,
    ))
}

/// Every request to the canary at once: it lifts the rollout's safety, as an override does.
async fn canary_skip(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<shipgate_api::requests::CanarySkipRequest>,
) -> ApiResult<impl IntoResponse> {
    let (app, env) = app_in_env(&state, &b.app, &b.env)?;
    caller.allow(Action::Override, Some(&env))?;
    let reason = skip_reason(&b.reason)?;
    Ok(Json(
        state
            .engine
            .canary_skip(&app, &env, caller.name(), reason)
            .await?,
    ))
}

/// The reason a canary skips its steps, which may not be blank (the API and the dashboard both
/// ask for one).
pub(crate) fn skip_reason(reason: &str) -> Result<&str, Problem> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason required",
            "say why the canary skips its steps: shipgate canary skip APP --env ENV --reason TEXT",
        ));
    }
    Ok(reason)
}

/// The canary takes no request from now on, on every host, and its promotion fails: getting
/// out, as a rollback is.
async fn canary_abort(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<AppEnv>,
) -> ApiResult<impl IntoResponse> {
    let (app, env) = app_in_env(&state, &b.app, &b.env)?;
    caller.allow(Action::Rollback, Some(&env))?;
    Ok(Json(
        state.engine.canary_abort(&app, &env, caller.name()).await?,
    ))
}

async fn status(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AppQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let app = optional("app", q.app.as_deref(), AppName::parse)?;
    let mut apps = state.engine.status(app.as_ref()).await?;
    for app in &mut apps {
        app.environments
            .retain(|e| caller.sees(Some(e.env.as_str())));
    }
    Ok(Json(apps))
}

/// 200 as soon as the API answers; the first line says whether the releases live before the
/// last stop are still being started again, the second which server leads and since when.
async fn healthz(State(state): State<AppState>) -> String {
    let first = if state.engine.restoring() {
        "ok: restoring the live releases"
    } else {
        "ok"
    };
    let leader = state.leader.borrow().clone();
    match leader {
        Some(lease) => format!(
            "{first}\nleader: {} (this server)\n",
            crate::lead::describe(&lease)
        ),
        None => format!("{first}\nleader: this server lost the engine's lease and is stopping\n"),
    }
}

/// Where a promotion can be read: the `Location` of every answer that starts one.
fn promotion_location(id: shipgate_core::PromotionId) -> String {
    format!("/api/v1/promotions/{id}")
}

/// `value` of the query parameter `name`, refused with 400 outside `min..=max`.
fn within(name: &str, value: i64, min: i64, max: i64) -> Result<i64, Problem> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else if max == i64::MAX {
        Err(Problem::bad_request(format!(
            "`{name}` must be at least {min}, not {value}"
        )))
    } else {
        Err(Problem::bad_request(format!(
            "`{name}` must be between {min} and {max}, not {value}"
        )))
    }
}

async fn history(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    let app = configured_app(&state, &q.app)?;
    let env = optional("environment", q.env.as_deref(), EnvName::parse)?;
    caller.allow(Action::Read, env.as_ref())?;
    let mut entries = state
        .engine
        .history(
            &app,
            env.as_ref(),
            within("limit", q.limit.unwrap_or(50), 1, 1000)?,
        )
        .await?;
    entries.retain(|e| caller.sees(Some(e.promotion.env.as_str())));
    Ok(Json(entries))
}

async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<impl IntoResponse> {
    let (app, env) = app_in_env(&state, &q.app, &q.env)?;
    caller.allow(Action::Read, Some(&env))?;
    let lines = within("lines", q.lines.unwrap_or(100), 1, 100_000)? as usize;
    let unreadable =
        |e: String| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "log unreadable", e);
    let remote = state
        .engine
        .read_remote_log(&app, &env, q.host.as_deref(), q.offset, lines)
        .await;
    let (text, offset) = match remote {
        Some(read) => read.map_err(unreadable)?,
        None => {
            let Some(path) = state.engine.log_file(&app, &env) else {
                return Ok(Json(LogChunk::default()));
            };
            let offset = q.offset;
            tokio::task::spawn_blocking(move || shipgate_deploy::read_log(&path, offset, lines))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|e| unreadable(e.to_string()))?
        }
    };
    // What an app prints of its own secrets is not shown to every viewer.
    let redactor = state.engine.redactor(&env);
    Ok(Json(LogChunk {
        text: redactor.redact(&text),
        offset,
    }))
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<impl IntoResponse> {
    let env = optional("environment", q.env.as_deref(), EnvName::parse)?;
    optional("app", q.app.as_deref(), AppName::parse)?;
    caller.allow(Action::Read, env.as_ref())?;
    let filter = EventFilter {
        after: within("after", q.after.unwrap_or(0), 0, i64::MAX)?,
        limit: Some(within("limit", q.limit.unwrap_or(1000), 1, 10_000)?),
        newest_first: q.order == EventOrder::Newest,
        app: q.app,
        env: q.env,
        actor: q.actor,
        kind: q.kind,
        ..EventFilter::default()
    };
    let mut events = state.engine.store().events(filter).await?;
    events.retain(|e| caller.sees(e.env.as_deref()));
    Ok(Json(events))
}

async fn event_stream(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    caller.allow(Action::Read, None)?;
    Ok(live_events(&state, caller, true))
}

/// Every new event the caller may see, as server-sent events; `named` gives each its kind as
/// the event type (the dashboard's script wants plain `message` events).
pub(crate) fn live_events(
    state: &AppState,
    caller: Caller,
    named: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>> {
    events_as_sse(state, move |e| {
        if !caller.sees(e.env.as_deref()) {
            return None;
        }
        let event = SseEvent::default().id(e.id.to_string());
        let event = if named {
            event.event(e.kind.to_string())
        } else {
            event
        };
        Some(event.data(serde_json::to_string(e).ok()?))
    })
}

/// Each new audit event that `to_sse` makes a server-sent event of, until the server stops.
pub(crate) fn events_as_sse<F>(
    state: &AppState,
    to_sse: F,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<F>>
where
    F: Fn(&shipgate_store::Event) -> Option<SseEvent> + Send + Sync + 'static,
{
    let to_sse = std::sync::Arc::new(to_sse);
    let events = tokio_stream::wrappers::BroadcastStream::new(state.engine.store().subscribe());
    let stream = events.filter_map(move |e| {
        let to_sse = to_sse.clone();
        async move { e.ok().and_then(|e| to_sse(&e)).map(Ok) }
    });
    let mut stopping = state.stopping.clone();
    let stream = stream.take_until(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn verify_audit(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let events = state.engine.store().events(EventFilter::default()).await?;
    Ok(Json(verify_chain(&events)))
}

/// Creates a token; the secret is in this answer and nowhere else (only its hash is stored).
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<TokenRequest>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageTokens, None)?;
    let name = b.name.as_str();
    if !shipgate_core::secret::is_credential_name(name) {
        return Err(Problem::bad_request(
            "a token name is 1 to 64 letters, digits, `-`, `_`, `.` or `@`, for example `ci-deploy`",
        ));
    }
    // Checked as the schema declares it: an empty person is refused, not taken for none.
    let person = b.person.as_deref();
    if let Some(p) = person
        && !shipgate_core::secret::is_credential_name(p)
    {
        return Err(Problem::bad_request(
            "a person is 1 to 64 letters, digits, `-`, `_`, `.` or `@`, for example `alice@example.com`",
        ));
    }
    // shipgate's own actor requests automatic promotions: no token may pass for it.
    if [Some(name), person].contains(&Some(SYSTEM)) {
        return Err(Problem::bad_request(format!(
            "`{SYSTEM}` is the name of shipgate's own actions; give the token another name or person"
        )));
    }
    let role = shipgate_core::Role::parse(&b.role).map_err(Problem::bad_request)?;
    let expires_at = match b.expires.as_deref() {
        None => None,
        Some(d) => {
            let parsed = shipgate_core::Duration::parse(d).map_err(|e| {
                Problem::bad_request(format!("expires: `{d}` is not a duration (90d, 12h): {e}"))
            })?;
            let secs = parsed.as_std().as_secs();
            if secs == 0 || secs > 10 * 366 * 86_400 {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "token refused",
                    format!(
                        "a token works from 1 s to ten years, not {parsed}; for longer, leave `expires` out (it then works until revoked)"
                    ),
                ));
            }
            let secs = i64::try_from(secs).unwrap_or(i64::MAX);
            Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs))
        }
    };
    let envs = b
        .envs
        .iter()
        .map(|e| {
            let scope = parse("environment", e, shipgate_core::EnvScope::parse)?;
            // A prefix may cover environments made later (on demand); a name must exist.
            match scope.env() {
                Some(env) if state.engine.config().environment(&env).is_none() => {
                    Err(shipgate_engine::EngineError::UnknownEnvironment(e.clone()).into())
                }
                _ => Ok(scope),
            }
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let secret = crate::auth::generate_token().map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            e.to_string(),
        )
    })?;
    let new = NewToken {
        name: name.to_owned(),
        role,
        envs,
        hash: crate::auth::hash_token(&secret),
        person: person.map(str::to_owned),
        expires_at,
    };
    let record = state
        .engine
        .store()
        .insert_token(new, caller.name())
        .await?;
    let location = format!("/api/v1/tokens/{}", record.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(CreatedToken {
            token: secret,
            record,
        }),
    ))
}

/// The server that runs the engine (this one: a standby passes the request on to the leader).
async fn leader(State(state): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let lease = state.leader.borrow().clone().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not the leader",
            "this server lost the engine's lease and is stopping; ask another server",
        )
    })?;
    Ok(Json(shipgate_api::status::LeaderView {
        server: lease.holder,
        address: lease.address,
        since: lease.since,
        epoch: lease.epoch,
        expires_at: lease.expires_at,
    }))
}

async fn list_hosts(State(state): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Read, None)?;
    let mut host = state
        .local_host
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if host.data_plane == "server" {
        host.instances = state.engine.store().running_instances().await?.len();
    }
    let mut all = vec![host];
    let links = state.hosts.views();
    for record in state.engine.store().hosts().await? {
        if record.removed_at.is_some() {
            continue;
        }
        let link = links.iter().find(|l| l.name == record.name);
        let hello = match link {
            Some(l) if l.connected => state.placement.hello(&record.name).await,
            _ => None,
        };
        all.push(shipgate_api::status::HostView {
            name: record.name.clone(),
            data_plane: if record.joined_at.is_some() {
                "agent".into()
            } else {
                "not joined".into()
            },
            // The connection decides (its pings notice a silent host within seconds), so that
            // what `host list` says is what a promotion finds.
            connected: link.is_some_and(|l| l.connected),
            since: link
                .map(|l| l.since)
                .or(record.joined_at)
                .unwrap_or(record.added_at),
            pid: hello.as_ref().map(|h| h.pid),
            version: hello.as_ref().map(|h| h.version.clone()),
            instances: hello.as_ref().map_or(0, |h| h.instances.len()),
            address: link.and_then(|l| l.peer).map(|p| p.to_string()),
        });
    }
    Ok(Json(all))
}

async fn reload(State(state): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::Reload, None)?;
    use crate::reload::{NotReloaded, Reload};
    match state.reloader.reload(&state.engine).await {
        Ok(Reload::Unchanged) => Ok(Json(shipgate_api::answers::Reloaded {
            changes: Vec::new(),
            reloading: false,
        })),
        Ok(Reload::Applying(changes)) => Ok(Json(shipgate_api::answers::Reloaded {
            changes,
            reloading: true,
        })),
        Err(NotReloaded::Invalid(problems)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid config",
            format!("the config file is invalid; the running config stays:\n{problems}"),
        )),
        Err(NotReloaded::Refused(why)) => {
            Err(Problem::new(StatusCode::CONFLICT, "not reloaded", why))
        }
    }
}

async fn gc(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<shipgate_api::requests::GcRequest>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::CollectGarbage, None)?;
    Ok(Json(state.engine.gc(req.dry_run, caller.name()).await?))
}

async fn add_host(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<shipgate_api::requests::HostRequest>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageHosts, None)?;
    let name = host_name(&req.name)?;
    let token = crate::auth::generate_token()
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "no token", e.to_string()))?;
    let record = state
        .engine
        .store()
        .add_host(
            name.as_str(),
            &crate::auth::hash_token(&token),
            caller.name(),
        )
        .await?;
    let location = format!("/api/v1/hosts/{}", record.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(shipgate_api::answers::CreatedHost {
            token,
            record,
            ca_fingerprint: shipgate_agent::tls::pem_fingerprint(&state.ca.cert_pem)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "no CA", e))?,
        }),
    ))
}

async fn remove_host(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageHosts, None)?;
    let record = state
        .engine
        .store()
        .remove_host(&name, caller.name())
        .await?;
    state.hosts.disconnect(&name);
    Ok(Json(record))
}

fn host_name(s: &str) -> ApiResult<shipgate_core::HostName> {
    shipgate_core::HostName::parse(s)
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid host name", e.0))
}

async fn join_host(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<shipgate_api::requests::JoinRequest>,
) -> ApiResult<impl IntoResponse> {
    let name = host_name(&req.name)?;
    let (certificate, fingerprint) = state
        .ca
        .issue_host(name.as_str(), &req.public_key)
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid join", e))?;
    state
        .engine
        .store()
        .join_host(
            name.as_str(),
            &crate::auth::hash_token(req.token.trim()),
            &fingerprint,
        )
        .await?;
    Ok(Json(shipgate_api::answers::Joined {
        certificate,
        ca: state.ca.cert_pem.clone(),
        agent_port: state.hosts.port,
    }))
}

async fn agent_endpoint(
    State(state): State<AppState>,
) -> Json<shipgate_api::answers::AgentEndpoint> {
    Json(shipgate_api::answers::AgentEndpoint {
        agent_port: state.hosts.port,
    })
}

async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageTokens, None)?;
    Ok(Json(state.engine.store().tokens().await?))
}

async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageTokens, None)?;
    Ok(Json(
        state
            .engine
            .store()
            .revoke_token(&name, caller.name())
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every endpoint is in the OpenAPI document and the document lists no other.
    #[test]
    fn the_openapi_document_lists_exactly_the_endpoints() {
        let mut documented: Vec<String> = crate::openapi::operations()
            .into_iter()
            .map(|(method, path)| format!("{method} {path}"))
            .collect();
        let mut served: Vec<String> = endpoints()
            .iter()
            .chain(open_endpoints().iter())
            .map(|(m, p, _)| format!("{m} /api/v1{p}"))
            .chain([
                "GET /healthz".to_owned(),
                "GET /metrics".to_owned(),
                "POST /api/v1/hosts/join".to_owned(),
                "GET /api/v1/hosts/endpoint".to_owned(),
            ])
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    /// The document is valid JSON that names the operations by id.
    #[test]
    fn the_openapi_document_is_json_with_operation_ids() {
        let doc: serde_json::Value = serde_json::from_str(&OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["paths"]["/api/v1/tokens"]["post"]["responses"]["201"]["links"]["RevokeToken"]["operationId"],
            "revokeToken"
        );
        assert_eq!(
            doc["components"]["schemas"]["PromotionKind"]["enum"],
            serde_json::json!(["promote", "rollback", "redeploy", "hotfix"]),
            "every promotion kind is stated"
        );
    }
}
