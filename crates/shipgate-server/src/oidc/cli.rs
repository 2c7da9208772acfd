//! The CLI's sign-in (`shipgate login`): `POST /api/v1/auth/login` gives the address to open
//! at the provider, which comes back to a loopback listener of the CLI; `POST
//! /api/v1/auth/token` trades what came back for a CLI session. Neither needs a token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shipgate_api::answers::{LoginStarted, SessionToken};
use shipgate_api::requests::{LoginRequest, TokenExchangeRequest};

use super::{SignInError, Via};
use crate::AppState;
use crate::extract::ApiJson;
use crate::problem::Problem;
use crate::session::{self, Kind};

/// `POST /api/v1/auth/login`.
pub(crate) async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginStarted>, Problem> {
    let provider = state.oidc.as_ref().ok_or(SignInError::Unconfigured)?;
    let redirect_uri = loopback(&req.redirect_uri)?;
    let (authorize_url, _) = provider.authorize_url(&redirect_uri, "/", Via::Cli).await?;
    Ok(Json(LoginStarted { authorize_url }))
}

/// `POST /api/v1/auth/token`.
pub(crate) async fn token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenExchangeRequest>,
) -> Result<Json<SessionToken>, Problem> {
    let provider = state.oidc.as_ref().ok_or(SignInError::Unconfigured)?;
    let finished = provider.finish(&req.code, &req.state, Via::Cli).await?;
    let grant = provider.grant(&finished.person)?;
    let started = session::start_for_person(&state, Kind::Cli, &finished.person, grant).await?;
    Ok(Json(SessionToken {
        token: started.id,
        expires_at: started.record.expires_at,
        name: started.record.grant.name.clone(),
        roles: session::roles(&started.record.grant),
    }))
}

/// The redirect URI when it is a loopback address with a port (RFC 8252 7.3), the only place
/// a CLI's sign-in may come back to; anything else could hand the code to someone else.
fn loopback(uri: &str) -> Result<String, Problem> {
    let refused = || {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid redirect_uri",
            format!(
                "redirect_uri `{uri}` is not a loopback address of this machine: write \
                 http://127.0.0.1:PORT/callback or http://localhost:PORT/callback"
            ),
        )
    };
    let url = reqwest::Url::parse(uri).map_err(|_| refused())?;
    let host_ok = matches!(url.host_str(), Some("127.0.0.1" | "localhost"));
    if url.scheme() != "http"
        || !host_ok
        || url.port().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.fragment().is_some()
    {
        return Err(refused());
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::loopback;

    #[test]
    fn only_a_loopback_address_with_a_port_is_a_redirect() {
        assert!(loopback("http://127.0.0.1:40123/callback").is_ok());
        assert!(loopback("http://localhost:40123/callback").is_ok());
        for refused in [
            "https://127.0.0.1:40123/callback",
            "http://127.0.0.1/callback",
            "http://evil.example.com:40123/callback",
            "http://127.0.0.1.evil.example.com:80/callback",
            "http://user@127.0.0.1:4000/callback",
            "not a url",
        ] {
            assert!(loopback(refused).is_err(), "{refused}");
        }
    }
}
