//! Sessions, kept in the store so they outlive a restart and work on every server of a shared
//! database: a browser's after a pasted token (`token`) or a sign-in at the identity provider
//! (`oidc`), and the CLI's after `shipgate login` (`cli`). The browser or the CLI holds the
//! session's id; the store holds only its hash.
//!
//! A token session is as good as its token: revoked, it ends. A provider's session carries the
//! person's roles from their groups, read again at the provider whenever its ID token expires;
//! a refusal there, or groups that no longer map to a role, end it.

use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use shipgate_core::{EventKind, Grant};
use shipgate_store::{NewEvent, SessionRecord};

use crate::AppState;
use crate::oidc::{Person, Via};
use crate::problem::Problem;

/// How long a session lasts at most.
pub(crate) const SESSION_TTL: SignedDuration = SignedDuration::from_hours(12);
/// The prefix of a CLI session's token, which tells it from an API token.
pub(crate) const CLI_PREFIX: &str = "sgs_";

/// What a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A browser, signed in with a pasted API token.
    Token,
    /// A browser, signed in at the identity provider.
    Oidc,
    /// The CLI, signed in at the identity provider (`shipgate login`).
    Cli,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Oidc => "oidc",
            Kind::Cli => "cli",
        }
    }
}

impl From<Via> for Kind {
    fn from(via: Via) -> Kind {
        match via {
            Via::Dashboard => Kind::Oidc,
            Via::Cli => Kind::Cli,
        }
    }
}

/// A session looked up by its id.
pub(crate) enum Found {
    /// It holds; its grant is the one of now.
    Live(Box<SessionRecord>),
    /// No such session (never, signed out, or past its end).
    Unknown,
    /// It ended just now, for the reason given.
    Ended(String),
}

/// A new session: its id (given to the browser or the CLI once) and its record.
pub(crate) struct Started {
    /// The secret the holder presents.
    pub(crate) id: String,
    /// As stored.
    pub(crate) record: SessionRecord,
}

fn random(bytes: usize) -> Result<String, Problem> {
    shipgate_core::secret::random_hex(bytes)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "no randomness", e))
}

/// What a sealed refresh token is bound to: it opens only for its own session.
fn refresh_purpose(id_hash: &str) -> String {
    format!("shipgate session refresh token\0{id_hash}")
}

/// The roles of a grant in words: `admin`, `deployer (development, preview-*)`.
pub(crate) fn roles(grant: &Grant) -> Vec<String> {
    grant
        .bindings()
        .map(|b| {
            if b.envs.is_empty() {
                b.role.to_string()
            } else {
                let envs: Vec<&str> = b.envs.iter().map(|e| e.as_str()).collect();
                format!("{} ({})", b.role, envs.join(", "))
            }
        })
        .collect()
}

/// Starts a browser session for a pasted token (whose hash the caller found in the store).
pub(crate) async fn start_for_token(
    state: &AppState,
    token_hash: String,
    grant: Grant,
) -> Result<Started, Problem> {
    let id = random(32)?;
    let now = Timestamp::now();
    let record = SessionRecord {
        id_hash: shipgate_core::secret::hash(&id),
        kind: Kind::Token.as_str().to_owned(),
        token_hash: Some(token_hash),
        grant,
        email: None,
        sealed_refresh: None,
        idp_expires_at: None,
        csrf: random(32)?,
        created_at: now,
        expires_at: now.saturating_add(SESSION_TTL).unwrap_or(Timestamp::MAX),
    };
    state.engine.store().insert_session(&record, None).await?;
    Ok(Started { id, record })
}

/// Starts a session for a person the provider vouched for, with `grant` (their roles), and
/// records that they signed in.
pub(crate) async fn start_for_person(
    state: &AppState,
    kind: Kind,
    person: &Person,
    grant: Grant,
) -> Result<Started, Problem> {
    let id = match kind {
        Kind::Cli => format!("{CLI_PREFIX}{}", random(32)?),
        Kind::Token | Kind::Oidc => random(32)?,
    };
    let id_hash = shipgate_core::secret::hash(&id);
    let sealed_refresh = match &person.refresh_token {
        Some(token) => Some(
            state
                .engine
                .seal_token(&refresh_purpose(&id_hash), token)
                .await?,
        ),
        None => None,
    };
    let now = Timestamp::now();
    let roles = roles(&grant);
    let record = SessionRecord {
        id_hash,
        kind: kind.as_str().to_owned(),
        token_hash: None,
        grant,
        email: person.email.clone(),
        sealed_refresh,
        idp_expires_at: Some(person.expires_at),
        csrf: random(32)?,
        created_at: now,
        expires_at: now.saturating_add(SESSION_TTL).unwrap_or(Timestamp::MAX),
    };
    let through = match kind {
        Kind::Cli => "the CLI (shipgate login)",
        Kind::Token | Kind::Oidc => "the dashboard",
    };
    let event = NewEvent {
        actor: record.grant.name.clone(),
        kind: EventKind::SignedIn,
        message: format!(
            "{} signed in through the identity provider on {through}, as {}",
            record.grant.name,
            roles.join(", ")
        ),
        data: serde_json::json!({
            "name": person.name,
            "email": person.email,
            "person": person.sub,
            "session": record.kind,
            "roles": roles,
        }),
        ..NewEvent::about_nothing()
    };
    state
        .engine
        .store()
        .insert_session(&record, Some(event))
        .await?;
    Ok(Started { id, record })
}

/// The session of `id` as it holds now: a token session's grant read from its token, a
/// provider's session refreshed at the provider when its ID token has expired.
pub(crate) async fn current(state: &AppState, id: &str) -> Result<Found, Problem> {
    let id_hash = shipgate_core::secret::hash(id);
    let store = state.engine.store();
    let Some(mut session) = store.session(&id_hash).await? else {
        return Ok(Found::Unknown);
    };
    if session.kind == Kind::Token.as_str() {
        let token = match &session.token_hash {
            Some(hash) => store.token_by_hash(hash).await?,
            None => None,
        };
        return match token {
            Some(token) => {
                session.grant = token.grant();
                Ok(Found::Live(Box::new(session)))
            }
            None => {
                store.end_session(&id_hash, None).await?;
                Ok(Found::Ended(
                    "the token this session was signed in with was revoked; sign in again"
                        .to_owned(),
                ))
            }
        };
    }
    if session
        .idp_expires_at
        .is_some_and(|at| at <= Timestamp::now())
    {
        return refresh(state, session).await;
    }
    Ok(Found::Live(Box::new(session)))
}

/// Reads the person's groups again at the provider; ends the session when that is refused or
/// leaves them no role.
async fn refresh(state: &AppState, session: SessionRecord) -> Result<Found, Problem> {
    let Some(provider) = &state.oidc else {
        let why = "this server no longer signs in through an identity provider ([server.oidc] \
                   was removed); sign in with a token";
        return end(state, &session, why).await;
    };
    let _one_at_a_time = provider.refreshing.lock().await;
    // Another request of this session may have refreshed it while this one waited.
    let store = state.engine.store();
    let Some(session) = store.session(&session.id_hash).await? else {
        return Ok(Found::Unknown);
    };
    if session
        .idp_expires_at
        .is_none_or(|at| at > Timestamp::now())
    {
        return Ok(Found::Live(Box::new(session)));
    }
    let purpose = refresh_purpose(&session.id_hash);
    let refresh_token = session
        .sealed_refresh
        .as_deref()
        .and_then(|sealed| state.engine.open_token(&purpose, sealed));
    let Some(refresh_token) = refresh_token else {
        let why = "your sign-in at the identity provider has expired and it gave no refresh \
                   token to renew it; sign in again";
        return end(state, &session, why).await;
    };
    let person = match provider.refresh(&refresh_token).await {
        Ok(person) => person,
        Err(e) if e.ends_session() => {
            // Another server of the database may have spent this refresh token a moment ago
            // (the lock above is this server's): what it got back is in the store.
            if let Some(renewed) = store.session(&session.id_hash).await?
                && renewed
                    .idp_expires_at
                    .is_some_and(|at| at > Timestamp::now())
            {
                return Ok(Found::Live(Box::new(renewed)));
            }
            let why = format!("your roles could not be read again at the identity provider: {e}");
            return end(state, &session, &why).await;
        }
        Err(e) => return Err(e.into()),
    };
    if session.grant.person.as_deref() != Some(person.sub.as_str()) {
        let why = "the identity provider answered the refresh for another person; sign in again";
        return end(state, &session, why).await;
    }
    let grant = match provider.grant(&person) {
        Ok(grant) => grant,
        Err(e) => return end(state, &session, &e.to_string()).await,
    };
    let sealed = match &person.refresh_token {
        Some(token) => Some(state.engine.seal_token(&purpose, token).await?),
        None => None,
    };
    store
        .refresh_session(
            &session.id_hash,
            &grant,
            sealed.as_deref(),
            Some(person.expires_at),
        )
        .await?;
    Ok(Found::Live(Box::new(SessionRecord {
        grant,
        sealed_refresh: sealed,
        idp_expires_at: Some(person.expires_at),
        ..session
    })))
}

/// Ends `session` for `why`, recorded in the audit log.
async fn end(state: &AppState, session: &SessionRecord, why: &str) -> Result<Found, Problem> {
    end_with_event(state, session, why).await?;
    Ok(Found::Ended(why.to_owned()))
}

/// Ends `session` (signed out, or refused), with a `session.ended` event for a person's.
pub(crate) async fn end_with_event(
    state: &AppState,
    session: &SessionRecord,
    why: &str,
) -> Result<(), Problem> {
    let event = (session.kind != Kind::Token.as_str()).then(|| NewEvent {
        actor: session.grant.name.clone(),
        kind: EventKind::SessionEnded,
        message: format!("the session of {} ended: {why}", session.grant.name),
        data: serde_json::json!({
            "name": session.grant.name,
            "person": session.grant.person,
            "session": session.kind,
            "why": why,
        }),
        ..NewEvent::about_nothing()
    });
    state
        .engine
        .store()
        .end_session(&session.id_hash, event)
        .await?;
    Ok(())
}
