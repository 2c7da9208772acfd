//! `/api/v1/secrets`: an environment's secrets, set (the value in the body) and removed by an
//! admin, or by a deployer of it with `[secrets] deployers_write`; listed by name and version
//! by anyone who reads the environment. No call returns a value.

use axum::Json;
use axum::extract::State;
use shipgate_api::answers::{SecretInfo, SecretSet, SecretsRecipient};
use shipgate_api::requests::SecretSetRequest;
use shipgate_core::Action;

use crate::AppState;
use crate::api::env_name;
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

/// `PUT /api/v1/secrets/{env}/{name}`.
pub(crate) async fn set(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((env, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SecretSetRequest>,
) -> ApiResult<Json<SecretSet>> {
    let env = env_name(&env)?;
    caller.allow(Action::Read, Some(&env))?;
    let (version, promotions) = state
        .engine
        .set_secret(&env, &name, &body.value, caller.grant(), body.deploy)
        .await?;
    Ok(Json(SecretSet {
        secret: state.engine.secret_info(&version),
        promotions,
    }))
}

/// `DELETE /api/v1/secrets/{env}/{name}`.
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((env, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<SecretInfo>> {
    let env = env_name(&env)?;
    caller.allow(Action::Read, Some(&env))?;
    let version = state
        .engine
        .remove_secret(&env, &name, caller.grant())
        .await?;
    Ok(Json(state.engine.secret_info(&version)))
}

/// `GET /api/v1/secrets/{env}`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(env): ApiPath<String>,
) -> ApiResult<Json<Vec<SecretInfo>>> {
    let env = env_name(&env)?;
    caller.allow(Action::Read, Some(&env))?;
    Ok(Json(state.engine.secret_list(&env).await?))
}

/// `GET /api/v1/secrets-recipient`.
pub(crate) async fn recipient(
    State(state): State<AppState>,
    _caller: Caller,
) -> Json<SecretsRecipient> {
    Json(SecretsRecipient {
        recipient: state.engine.secrets_recipient(),
    })
}
