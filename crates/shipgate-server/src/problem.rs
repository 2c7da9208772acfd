//! Errors as `application/problem+json` (RFC 9457), mapped once from the engine's errors.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shipgate_core::gate::DecisionRefusal;
use shipgate_engine::EngineError;
use shipgate_store::StoreError;
use shipgate_store::artifact::ArtifactError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
}

impl Problem {
    /// A problem with a status, a short title and a sentence the caller can act on.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
        }
    }
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// What to do about it.
    pub fn detail(&self) -> &str {
        &self.detail
    }
    /// 400 with the detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = shipgate_api::answers::Problem {
            kind: "about:blank".to_owned(),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        let (status, title) = match &e {
            EngineError::Refused(_) => (StatusCode::CONFLICT, "promotion refused"),
            EngineError::UnknownApp(_) | EngineError::UnknownEnvironment(_) => {
                (StatusCode::NOT_FOUND, "not in the config")
            }
            EngineError::NotRegistered { .. } | EngineError::NoSuchPromotion(_) => {
                (StatusCode::NOT_FOUND, "not found")
            }
            EngineError::NothingToRollBack(_) => (StatusCode::CONFLICT, "nothing to roll back"),
            EngineError::NoCanary(_) => (StatusCode::CONFLICT, "no canary"),
            EngineError::Pruned { .. } => (StatusCode::CONFLICT, "release pruned"),
            EngineError::NothingToHeal(_) => (StatusCode::CONFLICT, "nothing to heal"),
            EngineError::NothingToDecide(_) => (StatusCode::CONFLICT, "nothing to decide"),
            EngineError::DataRefused(_) => (StatusCode::CONFLICT, "data refresh refused"),
            EngineError::OnDemand(_) => (StatusCode::CONFLICT, "on-demand environment refused"),
            EngineError::UnknownFlag(_) => (StatusCode::NOT_FOUND, "no such flag"),
            EngineError::UnknownVariant(_) => (StatusCode::NOT_FOUND, "no such variant"),
            EngineError::Flag(_) => (StatusCode::UNPROCESSABLE_ENTITY, "flag change refused"),
            EngineError::Chaos(_) => (StatusCode::UNPROCESSABLE_ENTITY, "fault refused"),
            EngineError::ChaosNotAllowed(_) => (StatusCode::CONFLICT, "fault not allowed here"),
            EngineError::ChaosForbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            EngineError::UnknownFault(_) => (StatusCode::NOT_FOUND, "no such fault"),
            EngineError::UnknownTarget(_) => (StatusCode::NOT_FOUND, "no such notification target"),
            EngineError::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "quota used up"),
            EngineError::Decision(d) => match d {
                DecisionRefusal::OwnPromotion { .. }
                | DecisionRefusal::CausedPromotion { .. }
                | DecisionRefusal::WrongRole { .. } => (StatusCode::FORBIDDEN, "decision refused"),
                DecisionRefusal::AlreadyDecided { .. } => (StatusCode::CONFLICT, "already decided"),
                DecisionRefusal::RejectionWithoutComment => {
                    (StatusCode::BAD_REQUEST, "comment missing")
                }
            },
            EngineError::Signoff(refusal) => {
                use shipgate_core::signoff::SignoffRefusal as R;
                match refusal {
                    R::WrongRole { .. } | R::OwnPromotion(_) => {
                        (StatusCode::FORBIDDEN, "sign-off refused")
                    }
                    R::AlreadySigned { .. } => (StatusCode::CONFLICT, "already signed"),
                    R::UnknownScenario { .. } | R::FailWithoutNote => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "sign-off refused")
                    }
                }
            }
            EngineError::NoSignoff(_) => (StatusCode::CONFLICT, "nothing to sign off"),
            EngineError::LoadRefused(_) => (StatusCode::CONFLICT, "load refused"),
            EngineError::LoadForbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            EngineError::SecretsForbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            EngineError::SecretRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "secret refused"),
            EngineError::NoSuchSecret(_) => (StatusCode::NOT_FOUND, "no such secret"),
            EngineError::Store(StoreError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            EngineError::Artifact(a) => match a {
                ArtifactError::TooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "artifact too large")
                }
                ArtifactError::Io { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "artifact could not be stored",
                ),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "artifact refused"),
            },
            EngineError::Store(StoreError::ReleaseConflict { .. }) => {
                (StatusCode::CONFLICT, "release already registered")
            }
            EngineError::Store(StoreError::StateConflict { .. }) => {
                (StatusCode::CONFLICT, "state changed")
            }
            EngineError::Store(StoreError::NotFound(_)) => (StatusCode::NOT_FOUND, "not found"),
            EngineError::Store(StoreError::TokenExists(_)) => {
                (StatusCode::CONFLICT, "token name taken")
            }
            EngineError::Store(StoreError::Fenced { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "not the leader")
            }
            EngineError::Store(_)
            | EngineError::DataPlane(_)
            | EngineError::CannotIsolate(_)
            | EngineError::Secrets(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        if status.is_server_error() {
            tracing::error!("{detail}");
        }
        Self::new(status, title, detail)
    }
}

impl From<ArtifactError> for Problem {
    fn from(e: ArtifactError) -> Self {
        EngineError::Artifact(e).into()
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e).into()
    }
}
