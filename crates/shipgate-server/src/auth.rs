//! Bearer tokens: the admin token written at first start, and the check every API call passes.

use std::path::Path;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shipgate_store::{NewToken, Store, TokenRecord};

use crate::AppState;
use crate::problem::Problem;
use crate::session::Found;

/// The admin token's file inside the data dir (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A new random token: `sg_` and 64 hex digits.
pub fn generate_token() -> anyhow::Result<String> {
    let hex = shipgate_core::secret::random_hex(32).map_err(anyhow::Error::msg)?;
    Ok(format!("sg_{hex}"))
}

/// The hex sha256 under which a token is stored; the token itself never is.
pub fn hash_token(token: &str) -> String {
    shipgate_core::secret::hash(token)
}

/// Writes the admin token on first start and makes sure the store knows its hash. A token in
/// the file that was revoked is replaced by a new one, so a revoked admin token never keeps the
/// server (and every environment) from starting.
pub(crate) async fn ensure_admin_token(store: &dyn Store, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate_token()?;
            write_admin_token(&path, &token)?;
            token
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the admin token {}", path.display()));
        }
    };
    let hash = hash_token(&token);
    if store.token_by_hash(&hash).await?.is_some() {
        return Ok(());
    }
    let name = admin_token_name(&hash);
    let revoked = store.tokens().await?.into_iter().any(|t| t.name == name);
    let hash = if revoked {
        let token = generate_token()?;
        write_admin_token(&path, &token)?;
        let hash = hash_token(&token);
        tracing::warn!(
            "the admin token in {} (token `{name}`) was revoked; a new admin token `{}` was written there, and the shipgate command on this machine uses it by itself",
            path.display(),
            admin_token_name(&hash)
        );
        hash
    } else {
        hash
    };
    store
        .insert_token(
            NewToken {
                name: admin_token_name(&hash),
                role: shipgate_core::Role::Admin,
                envs: Vec::new(),
                hash,
                person: None,
                expires_at: None,
            },
            crate::api::SYSTEM,
        )
        .await?;
    Ok(())
}

/// The name of the admin token with that hash: `admin-` and the hash's first 8 digits.
fn admin_token_name(hash: &str) -> String {
    format!("admin-{}", &hash[..8])
}

/// Replaces the admin token file at once, so a crash leaves either the old token or the new one.
fn write_admin_token(path: &Path, token: &str) -> anyhow::Result<()> {
    let fresh = path.with_extension("token.new");
    shipgate_agent::replace_private(path, &fresh, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing the admin token to {}", path.display()))
}

/// Lets a request through only with a known bearer token (an API token, or a CLI session's):
/// its grant goes along, and an API token's record too.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Problem::new(StatusCode::UNAUTHORIZED, "token required", "send `Authorization: Bearer <token>`; a local server's admin token is in its data dir (admin.token), and the shipgate command finds it by itself").into_response();
    };
    if presented.starts_with(crate::session::CLI_PREFIX) {
        return match crate::session::current(&state, presented).await {
            Ok(Found::Live(session)) if session.kind == "cli" => {
                request.extensions_mut().insert(session.grant.clone());
                next.run(request).await
            }
            Ok(Found::Live(_) | Found::Unknown) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unknown session",
                "this session is not known to the server, or it ended; sign in again (shipgate login)",
            )
            .into_response(),
            Ok(Found::Ended(why)) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "session ended",
                format!("{why} (shipgate login)"),
            )
            .into_response(),
            Err(e) => e.into_response(),
        };
    }
    match state
        .engine
        .store()
        .token_by_hash(&hash_token(presented))
        .await
    {
        Ok(Some(record)) => {
            request.extensions_mut().insert(record.grant());
            request.extensions_mut().insert::<TokenRecord>(record);
            next.run(request).await
        }
        Ok(None) => {
            let revoked = state
                .engine
                .store()
                .revoked_token_by_hash(&hash_token(presented))
                .await
                .ok()
                .flatten();
            match revoked {
                Some(t) if t.revoked_at.is_none() => Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "expired token",
                    format!(
                        "this token (`{}`) expired at {}; ask an admin for a new one (shipgate token create --expires)",
                        t.name,
                        t.expires_at.map(|r| r.to_string()).unwrap_or_default()
                    ),
                )
                .into_response(),
                Some(t) => Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "revoked token",
                    format!(
                        "this token (`{}`) was revoked at {}; ask an admin for a new one (shipgate token create)",
                        t.name,
                        t.revoked_at.map(|r| r.to_string()).unwrap_or_default()
                    ),
                )
                .into_response(),
                None => Problem::new(StatusCode::UNAUTHORIZED, "unknown token", "this token is not known to the server; use the admin token in the server's data dir (admin.token), or one an admin made for you").into_response(),
            }
        }
        Err(e) => Problem::from(e).into_response(),
    }
}
