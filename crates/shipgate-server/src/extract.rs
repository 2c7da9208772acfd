//! axum's extractors with their rejections answered as problem+json, like every other error.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A JSON body.
pub(crate) struct ApiJson<T>(pub T);

/// A query string.
pub(crate) struct ApiQuery<T>(pub T);

/// Path parameters.
pub(crate) struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(|e| match e {
                axum::extract::rejection::JsonRejection::MissingJsonContentType(_) => Problem::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported media type",
                    "send the body as JSON with `Content-Type: application/json`",
                ),
                other => Problem::bad_request(other.body_text()),
            })?;
        // Every body is an object: serde would also read a struct from an array.
        if !value.is_object() {
            return Err(Problem::bad_request(
                "the body must be a JSON object (see /api/v1/openapi.json)",
            ));
        }
        serde_json::from_value::<T>(value).map(Self).map_err(|e| {
            Problem::bad_request(format!(
                "Failed to deserialize the JSON body into the target type: {e}"
            ))
        })
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(|e| Problem::bad_request(e.body_text()))?;
        Ok(Self(value))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::bad_request(e.body_text()))?;
        Ok(Self(value))
    }
}

/// The token a request came with, and what it may do.
pub(crate) struct Caller(pub shipgate_core::Grant);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        // The auth layer puts the token's (or the session's) grant there before any handler runs.
        let grant = parts
            .extensions
            .get::<shipgate_core::Grant>()
            .ok_or_else(|| {
                Problem::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "token required",
                    "send `Authorization: Bearer <token>`",
                )
            })?;
        Ok(Self(grant.clone()))
    }
}

impl Caller {
    /// The token's name, the actor of what it does.
    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }

    /// The token's role and scope.
    pub(crate) fn grant(&self) -> &shipgate_core::Grant {
        &self.0
    }

    /// Refuses with 403 unless the token may do `action` (on `env`).
    pub(crate) fn allow(
        &self,
        action: shipgate_core::Action,
        env: Option<&shipgate_core::EnvName>,
    ) -> Result<(), Problem> {
        self.0.check(action, env).map_err(|denied| {
            Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                denied.to_string(),
            )
        })
    }

    /// Whether records of `env` (None: of no environment) are in the token's scope.
    pub(crate) fn sees(&self, env: Option<&str>) -> bool {
        match env {
            Some(env) => {
                shipgate_core::EnvName::parse(env).is_ok_and(|env| self.0.sees(&env))
                    // A name that is no environment is seen only by a grant of every one.
                    || self.0.bindings().any(|b| b.envs.is_empty())
            }
            None => true,
        }
    }
}
