//! `/api/v1/secrets`: an environment's secrets, set (the value in the body) and removed by an
//! admin, or by a deployer of it with `[secrets] deployers_write`; listed by name and version
//! by anyone who reads the environment. No call returns a value.

use axum::Json;
use axum::extract::State;
use shipgate_api::answers::{SecretInfo, SecretSet, SecretsRecipient};
use shipgate_api::requests::SecretSetRequest;
use shipgate_core::{Action, EnvName};

use crate::AppState;
use crate::api::env_name;
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

fn info(env: &EnvName, v: &shipgate_store::SecretVersion, used_by: Vec<String>) -> SecretInfo {
    SecretInfo {
        env: env.clone(),
        name: v.name.clone(),
        version: v.version,
        set_by: v.set_by.clone(),
        set_at: v.set_at,
        source: v.source.clone(),
        used_by,
        removed: v.sealed.is_none(),
    }
}

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
    let used_by = used_by(&state, &env, &name);
    Ok(Json(SecretSet {
        secret: info(&env, &version, used_by),
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
    let used_by = used_by(&state, &env, &name);
    Ok(Json(info(&env, &version, used_by)))
}

/// `GET /api/v1/secrets/{env}`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(env): ApiPath<String>,
) -> ApiResult<Json<Vec<SecretInfo>>> {
    let env = env_name(&env)?;
    caller.allow(Action::Read, Some(&env))?;
    let list = state.engine.secret_list(&env).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| SecretInfo {
                env: env.clone(),
                name: s.name,
                version: s.version,
                set_by: s.set_by,
                set_at: s.set_at,
                source: s.source,
                used_by: s.used_by,
                removed: false,
            })
            .collect(),
    ))
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

fn used_by(state: &AppState, env: &EnvName, name: &str) -> Vec<String> {
    state
        .engine
        .config()
        .environment(env)
        .map(|e| {
            e.secret_vars
                .iter()
                .filter(|(_, r)| r.env == *env && r.name == name)
                .map(|(v, _)| v.clone())
                .collect()
        })
        .unwrap_or_default()
}
