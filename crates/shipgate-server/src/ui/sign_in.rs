//! Signing in to the dashboard: by a pasted token, or at the identity provider of
//! `[server.oidc]` (`/auth/login`, then `/auth/callback`); and signing out. The sessions
//! themselves are [`crate::session`]'s.

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::pages::{CsrfForm, Page, error_page, from_problem, html, query_escape};
use super::{Viewer, session_cookie};
use crate::AppState;

/// The sign-in page.
#[derive(Template)]
#[template(path = "sign_in.html")]
pub(crate) struct SignInPage {
    next: String,
    error: String,
    /// Whether the server signs in through an identity provider too.
    oidc: bool,
    /// The way to it, coming back to `next`.
    login: String,
}

impl SignInPage {
    /// The sign-in page answered with `status`, saying `error` (empty: nothing went wrong).
    pub(crate) fn answer(status: StatusCode, next: &str, error: &str, oidc: bool) -> Response {
        let next = safe_next(Some(next));
        let page = SignInPage {
            login: format!("/auth/login?next={}", query_escape(&next)),
            next,
            error: error.to_owned(),
            oidc,
        };
        (status, html(&page)).into_response()
    }
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

/// Only a path of this site, so a sign-in link cannot send anyone elsewhere (browsers drop
/// tabs and newlines from addresses, so `/\t/evil.example` would be `//evil.example`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The cookie that ties a sign-in at the provider to the browser that started it: the hash
/// of its `state`, sent back only to `/auth/callback`. Without it, a callback address someone
/// else started (their own sign-in) would sign this browser in as them.
const SIGN_IN_COOKIE: &str = "shipgate_sign_in";

pub(crate) async fn sign_in_form(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
) -> Response {
    SignInPage::answer(
        StatusCode::OK,
        q.next.as_deref().unwrap_or("/"),
        "",
        state.oidc.is_some(),
    )
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    token: String,
    next: Option<String>,
}

/// The cookie of a new session, and the way on to `next`.
fn signed_in(id: &str, next: &str) -> Response {
    let max_age = crate::session::SESSION_TTL.as_secs().unsigned_abs();
    (
        [(header::SET_COOKIE, session_cookie(id, max_age))],
        Redirect::to(next),
    )
        .into_response()
}

pub(crate) async fn sign_in(State(state): State<AppState>, Form(f): Form<SignInForm>) -> Response {
    let next = safe_next(f.next.as_deref());
    let hash = crate::auth::hash_token(f.token.trim());
    match state.engine.store().token_by_hash(&hash).await {
        Ok(Some(token)) => {
            match crate::session::start_for_token(&state, hash, token.grant()).await {
                Ok(started) => signed_in(&started.id, &next),
                Err(e) => from_problem(e).into_response(),
            }
        }
        Ok(None) => SignInPage::answer(
            StatusCode::UNAUTHORIZED,
            &next,
            "This token is not known to the server or was revoked. Paste a token made with `shipgate token create`, or the admin token in the server's data dir.",
            state.oidc.is_some(),
        ),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()).into_response(),
    }
}

/// The identity provider the dashboard signs in through; 404 without `[server.oidc]`.
fn provider_of(state: &AppState) -> Result<&crate::oidc::Provider, super::pages::PageError> {
    state.oidc.as_deref().ok_or_else(|| {
        error_page(
            StatusCode::NOT_FOUND,
            &crate::oidc::SignInError::Unconfigured.to_string(),
        )
    })
}

/// `GET /auth/login?next=`: off to the identity provider.
pub(crate) async fn oidc_login(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<NextQuery>,
) -> Page {
    let provider = provider_of(&state)?;
    let own = own_address(&state);
    let next = safe_next(q.next.as_deref());
    // The provider comes back to this server's own address: the sign-in starts there too, so
    // the cookie that ties it to this browser is one the browser sends back.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let own_host = own
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next());
    if host.is_some() && host != own_host {
        return Ok(
            Redirect::to(&format!("{own}/auth/login?next={}", query_escape(&next))).into_response(),
        );
    }
    let redirect_uri = format!("{own}/auth/callback");
    let (url, sign_in) = provider
        .authorize_url(&redirect_uri, &next, crate::oidc::Via::Dashboard)
        .await
        .map_err(|e| error_page(e.status(), &e.to_string()))?;
    // Lax: the browser comes back to the callback from the provider's site, by a top-level GET.
    let tie = format!(
        "{SIGN_IN_COOKIE}={}; HttpOnly; SameSite=Lax; Path=/auth/callback; Max-Age=600",
        shipgate_core::secret::hash(&sign_in)
    );
    Ok((
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&tie).unwrap_or_else(|_| HeaderValue::from_static("")),
        )],
        Redirect::to(&url),
    )
        .into_response())
}

/// Where browsers reach this server: `public_url`, else the address its API is bound to
/// (this machine's loopback when it listens on every address).
pub(crate) fn own_address(state: &AppState) -> String {
    let config = state.engine.config();
    if let Some(url) = &config.server.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    // `listen` may ask for port 0: the port bound is in the lease this server holds.
    let bound = state
        .leader
        .borrow()
        .as_ref()
        .and_then(|lease| lease.address.strip_prefix("http://")?.parse().ok());
    let mut addr: std::net::SocketAddr = bound.unwrap_or(config.server.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/callback?code&state`: back from the identity provider.
pub(crate) async fn oidc_callback(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Page {
    let provider = provider_of(&state)?;
    if let Some(error) = &q.error {
        let description = q
            .error_description
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Err(error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "the identity provider did not sign you in: {error}{description}; sign in again"
            ),
        ));
    }
    let (Some(code), Some(sign_in)) = (&q.code, &q.state) else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "this address lacks the code and state the identity provider sends back; sign in again",
        ));
    };
    if super::cookie(&headers, SIGN_IN_COOKIE) != Some(shipgate_core::secret::hash(sign_in)) {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "this sign-in was not started in this browser (or its cookie was refused); sign in again from here",
        ));
    }
    let refused = |e: crate::oidc::SignInError| error_page(e.status(), &e.to_string());
    let finished = provider
        .finish(code, sign_in, crate::oidc::Via::Dashboard)
        .await
        .map_err(refused)?;
    let grant = provider.grant(&finished.person).map_err(refused)?;
    let started = crate::session::start_for_person(
        &state,
        crate::session::Kind::Oidc,
        &finished.person,
        grant,
    )
    .await
    .map_err(from_problem)?;
    // A page that moves on, not a redirect: the browser came here from the provider's site, and
    // a redirect would carry on that cross-site navigation, on which it withholds the new
    // SameSite=Strict cookie. A navigation this page starts is same-site, and carries it.
    let page = SignedInPage {
        next: safe_next(Some(&finished.next)),
        name: started.record.grant.name.clone(),
    };
    let max_age = crate::session::SESSION_TTL.as_secs().unsigned_abs();
    // Appended, not inserted: the session's cookie, and the sign-in's tie cleared.
    Ok((
        axum::response::AppendHeaders([
            (header::SET_COOKIE, session_cookie(&started.id, max_age)),
            (
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "shipgate_sign_in=; HttpOnly; SameSite=Lax; Path=/auth/callback; Max-Age=0",
                ),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ]),
        html(&page),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "signed_in.html")]
struct SignedInPage {
    /// Where to go on.
    next: String,
    /// Who signed in.
    name: String,
}

pub(crate) async fn sign_out(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(f): Form<CsrfForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    crate::session::end_with_event(&state, &viewer.session, "signed out")
        .await
        .map_err(from_problem)?;
    Ok((
        [(header::SET_COOKIE, session_cookie("", 0))],
        Redirect::to("/sign-in"),
    )
        .into_response())
}
