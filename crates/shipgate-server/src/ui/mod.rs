//! The dashboard: server-rendered pages (askama) with their CSS and a little script embedded in
//! the binary. Readable without JavaScript; with it, pages follow the event stream.
//!
//! Sign-in trades a pasted token, or a sign-in at the identity provider (`/auth/login`), for a
//! session cookie (`HttpOnly`, `SameSite=Strict`) naming a session in the store (see
//! [`crate::session`]); every form that changes state carries the session's CSRF token, and a
//! request whose `Origin` is another site is refused. A token's session only remembers the
//! token's hash, so revoking the token signs its sessions out at once.

mod canary;
mod chart;
mod dora;
mod flags;
mod load;
mod on_demand;
mod pages;
mod sign_in;
mod signoff;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::extract::Caller;
use crate::session::Found;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "shipgate_session";

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("app.js");

/// A signed-in browser: its session's grant (as it holds now) and CSRF token.
pub(crate) struct Viewer {
    caller: Caller,
    csrf: String,
    session: shipgate_store::SessionRecord,
}

impl Viewer {
    /// Refuses a form whose CSRF token is not this session's.
    fn check_csrf(&self, presented: &str) -> Result<(), pages::PageError> {
        if bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(pages::error_page(
                StatusCode::FORBIDDEN,
                "This form is out of date or came from another site. Reload the page and try again.",
            ))
        }
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// The value of the cookie `name` the request came with.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A state-changing request from another site is refused, whatever its cookies.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = pages::PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, pages::PageError> {
        let sign_in = || {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            pages::PageError::SignIn(format!("/sign-in?next={}", pages::query_escape(&next)))
        };
        if parts.method != axum::http::Method::GET && !same_origin(&parts.headers) {
            return Err(pages::error_page(
                StatusCode::FORBIDDEN,
                "This request came from another site and was refused.",
            ));
        }
        let Some(id) = session_id(&parts.headers) else {
            return Err(sign_in());
        };
        match crate::session::current(state, &id).await {
            // A CLI session's token is not a cookie.
            Ok(Found::Live(session)) if session.kind != "cli" => Ok(Viewer {
                caller: Caller(session.grant.clone()),
                csrf: session.csrf.clone(),
                session: *session,
            }),
            Ok(Found::Live(_) | Found::Unknown) => Err(sign_in()),
            Ok(Found::Ended(why)) => Err(pages::PageError::SessionEnded {
                next: parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
                message: why,
                oidc: state.oidc.is_some(),
            }),
            Err(e) => Err(pages::from_problem(e)),
        }
    }
}

fn session_cookie(id: &str, max_age: u64) -> HeaderValue {
    let cookie =
        format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's routes, merged beside the API.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::board))
        .route(
            "/sign-in",
            get(sign_in::sign_in_form).post(sign_in::sign_in),
        )
        .route("/sign-out", post(sign_in::sign_out))
        .route("/auth/login", get(sign_in::oidc_login))
        .route("/auth/callback", get(sign_in::oidc_callback))
        .route("/apps/{app}/releases/{version}", get(pages::release))
        .route(
            "/apps/{app}/releases/{version}/decisions",
            post(pages::decide),
        )
        .route(
            "/apps/{app}/releases/{version}/signoff/{env}",
            get(signoff::page).post(signoff::sign),
        )
        .route("/apps/{app}/environments/{env}", get(pages::environment))
        .route(
            "/apps/{app}/environments/{env}/rollback",
            post(pages::rollback),
        )
        .route(
            "/apps/{app}/environments/{env}/promote",
            post(pages::promote),
        )
        .route(
            "/apps/{app}/environments/{env}/canary/resume",
            post(canary::resume),
        )
        .route(
            "/apps/{app}/environments/{env}/canary/skip",
            post(canary::skip),
        )
        .route(
            "/apps/{app}/environments/{env}/canary/abort",
            get(canary::ask_to_abort).post(canary::abort),
        )
        .route(
            "/apps/{app}/environments/{env}/flags/{key}",
            post(flags::set),
        )
        .route(
            "/apps/{app}/environments/{env}/flag-changes/{id}",
            post(flags::decide),
        )
        .route(
            "/envs/{name}/delete",
            get(on_demand::ask_to_delete).post(on_demand::delete),
        )
        .route("/audit", get(pages::audit))
        .route("/dora", get(dora::page))
        .route("/audit.jsonl", get(pages::audit_export))
        .route("/ui/events", get(pages::live))
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
}
