//! `/api/v1/backups`: backups of an environment's data, each proven by a restore drill (a
//! deployer of the environment takes one), listed, shown, and restored (an admin, with a
//! reason).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use shipgate_api::requests::{BackupRequest, BackupsQuery, RestoreRequest};
use shipgate_core::Action;
use shipgate_store::BackupRecord;

use crate::AppState;
use crate::api::{app_name, env_name};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

/// `POST /api/v1/backups`: answers once the backup is taken and drilled.
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<BackupRequest>,
) -> ApiResult<impl IntoResponse> {
    let env = env_name(&req.env)?;
    caller.allow(Action::TakeBackup, Some(&env))?;
    let app = app_name(&req.app)?;
    let reason = format!("asked by {}", caller.name());
    let record = state.engine.take_backup(&app, &env, &reason).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// `GET /api/v1/backups`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<BackupsQuery>,
) -> ApiResult<Json<Vec<BackupRecord>>> {
    let app = q.app.as_deref().map(app_name).transpose()?;
    let env = q.env.as_deref().map(env_name).transpose()?;
    caller.allow(Action::Read, env.as_ref())?;
    let all = state
        .engine
        .store()
        .backups(app.as_ref(), env.as_ref())
        .await
        .map_err(shipgate_engine::EngineError::from)?;
    Ok(Json(
        all.into_iter()
            .filter(|b| caller.sees(Some(b.env.as_str())))
            .collect(),
    ))
}

/// `GET /api/v1/backups/{id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<BackupRecord>> {
    let b = state.engine.backup_record(id).await?;
    caller.allow(Action::Read, Some(&b.env))?;
    Ok(Json(b))
}

/// `POST /api/v1/backups/{id}/restore`: an admin, with a reason; answers once restored.
pub(crate) async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<Json<BackupRecord>> {
    let b = state.engine.backup_record(id).await?;
    caller.allow(Action::RestoreBackup, Some(&b.env))?;
    if req.reason.trim().is_empty() {
        return Err(Problem::bad_request(
            "a restore needs a reason, recorded in the audit log (--reason \"undo migration 42\")",
        ));
    }
    Ok(Json(
        state
            .engine
            .restore_backup(id, caller.name(), req.reason.trim())
            .await?,
    ))
}

/// `POST /api/v1/backups/{id}/drill`: proves a backup again by restoring it into scratch.
pub(crate) async fn drill(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<BackupRecord>> {
    let b = state.engine.backup_record(id).await?;
    caller.allow(Action::TakeBackup, Some(&b.env))?;
    Ok(Json(state.engine.drill_backup(&b).await?))
}
