//! Single sign-on through an OpenID Connect provider: the authorization code flow with PKCE,
//! for the dashboard and for `shipgate login`. The provider's discovery document and key set
//! are fetched when first needed and kept; the person it vouches for becomes a grant through
//! `[server.oidc.roles]` (the rule is `OidcConfig::bindings`, in core). Sign-ins under way are
//! kept in the store, so a callback reaching another server of the same database works.

pub(crate) mod cli;
pub(crate) mod jwt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shipgate_core::Grant;
use shipgate_core::sso::OidcConfig;
use shipgate_store::{Store, StoreError};

use crate::problem::Problem;

/// How long a sign-in may take at the provider.
const SIGN_IN_TTL: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);
/// The key set is fetched again for an unknown key at most this often, so tokens naming a key
/// that does not exist cannot make the server hammer the provider.
const JWKS_REFETCH: Duration = Duration::from_secs(10);
/// Clock skew allowed between the provider and this server.
const LEEWAY_SECS: i64 = 60;
/// How long a call to the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a sign-in or a refresh did not give a person with a role.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignInError {
    /// The server has no `[server.oidc]`.
    #[error("this server has no [server.oidc]: sign in with a token")]
    Unconfigured,
    /// The callback's state is not one this server gave out, or it was used already.
    #[error("this sign-in was already used or has expired; sign in again")]
    UnknownState,
    /// The provider could not be reached or answered something unreadable (or, rarer, this
    /// server had no randomness for the sign-in's secrets): nothing was refused, try again.
    #[error("{0}")]
    Unreachable(String),
    /// The provider refused (the code, the client, or the refresh token).
    #[error("{0}")]
    Refused(String),
    /// The ID token was refused.
    #[error("{0}")]
    Token(#[from] jwt::JwtError),
    /// The groups claim was left out for too many groups (Azure's overage).
    #[error(
        "the provider sent a group overage instead of your groups (Azure leaves them out past \
         200 groups): configure the app registration to emit only the groups assigned to the \
         application, or use app roles with groups_claim = \"roles\""
    )]
    Overage,
    /// The person signed in, but none of their groups maps to a role.
    #[error(
        "you signed in as {who}, but none of your groups ({groups}) maps to a role in shipgate; \
         ask an admin to map one in [server.oidc.roles] (mapped: {mapped})"
    )]
    Unmapped {
        /// The person's name.
        who: String,
        /// Their groups, comma-separated (or "none").
        groups: String,
        /// The groups the config maps.
        mapped: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SignInError {
    /// The status it is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unconfigured => StatusCode::NOT_FOUND,
            Self::UnknownState | Self::Refused(_) | Self::Token(_) => StatusCode::BAD_REQUEST,
            Self::Unreachable(_) => StatusCode::BAD_GATEWAY,
            Self::Overage | Self::Unmapped { .. } => StatusCode::FORBIDDEN,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the session this happened to should end (rather than wait for the provider to
    /// answer again).
    pub(crate) fn ends_session(&self) -> bool {
        !matches!(self, Self::Unreachable(_) | Self::Store(_))
    }
}

impl From<SignInError> for Problem {
    fn from(e: SignInError) -> Self {
        match e {
            SignInError::Store(e) => e.into(),
            other => Problem::new(other.status(), "sign-in refused", other.to_string()),
        }
    }
}

/// A person the provider vouched for.
#[derive(Debug, Clone)]
pub(crate) struct Person {
    /// The provider's id of the person (`sub`), stable across sign-ins.
    pub(crate) sub: String,
    /// Their display name, if the token has one.
    pub(crate) name: Option<String>,
    /// Their email, if the token has one.
    pub(crate) email: Option<String>,
    /// Their groups, as the provider names them.
    pub(crate) groups: Vec<String>,
    /// The token to ask for a fresh ID token with, if the provider gave one.
    pub(crate) refresh_token: Option<String>,
    /// When the ID token ends: the groups are read again then.
    pub(crate) expires_at: Timestamp,
}

impl Person {
    /// The name shown and recorded as the actor: the email, else the name, else the id.
    pub(crate) fn display(&self) -> &str {
        self.email
            .as_deref()
            .or(self.name.as_deref())
            .unwrap_or(&self.sub)
    }
}

/// A sign-in finished at the provider: the person, and where they were going.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Who signed in.
    pub(crate) person: Person,
    /// The page (dashboard) they asked for before signing in.
    pub(crate) next: String,
}

/// Where a sign-in began, and so the only place it may finish: a code sent back to the
/// dashboard cannot be traded for a CLI session, nor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Via {
    /// The dashboard's `/auth/login`.
    Dashboard,
    /// `shipgate login` through `POST /api/v1/auth/login`.
    Cli,
}

/// What a sign-in under way keeps in the store until its callback.
#[derive(Serialize, Deserialize)]
struct Pending {
    via: Via,
    nonce: String,
    verifier: String,
    redirect_uri: String,
    next: String,
}

/// The parts of the provider's discovery document shipgate uses.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The provider's answer at its token endpoint.
#[derive(Deserialize)]
struct Tokens {
    id_token: Option<String>,
    refresh_token: Option<String>,
}

/// The provider of `[server.oidc]`, with what was fetched from it.
pub(crate) struct Provider {
    config: OidcConfig,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    /// Held while a session is refreshed, so two requests of one session never spend its
    /// refresh token twice (a provider that rotates them would refuse the second).
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    discovery: tokio::sync::Mutex<Option<Discovery>>,
    /// The key set, and when it was last fetched again for a key it lacked.
    keys: tokio::sync::Mutex<Option<(jwt::Jwks, Option<Instant>)>>,
}

impl Provider {
    /// The provider of `config`; nothing is fetched until the first sign-in.
    pub(crate) fn new(config: OidcConfig, store: Arc<dyn Store>) -> anyhow::Result<Provider> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROVIDER_TIMEOUT)
            // The token endpoint is called with a secret: never follow it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Provider {
            config,
            http,
            store,
            refreshing: tokio::sync::Mutex::default(),
            discovery: tokio::sync::Mutex::default(),
            keys: tokio::sync::Mutex::default(),
        })
    }

    /// The address to send the person to at the provider, and the sign-in's state. The
    /// provider comes back to `redirect_uri`; `next` is kept for the dashboard.
    pub(crate) async fn authorize_url(
        &self,
        redirect_uri: &str,
        next: &str,
        via: Via,
    ) -> Result<(String, String), SignInError> {
        let discovery = self.discovery().await?;
        let random = || shipgate_core::secret::random_hex(32).map_err(SignInError::Unreachable);
        let state = random()?;
        let pending = Pending {
            via,
            nonce: random()?,
            verifier: random()?,
            redirect_uri: redirect_uri.to_owned(),
            next: next.to_owned(),
        };
        let challenge = jwt::pkce_challenge(&pending.verifier);
        let scope = self.config.scopes.join(" ");
        let url = reqwest::Url::parse_with_params(
            &discovery.authorization_endpoint,
            [
                ("response_type", "code"),
                ("client_id", self.config.client_id.as_str()),
                ("redirect_uri", redirect_uri),
                ("scope", scope.as_str()),
                ("state", state.as_str()),
                ("nonce", pending.nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|e| {
            SignInError::Unreachable(format!(
                "the provider's authorization_endpoint `{}` is not a URL ({e})",
                discovery.authorization_endpoint
            ))
        })?;
        let payload = serde_json::to_string(&pending)
            .map_err(|e| SignInError::Unreachable(format!("keeping the sign-in: {e}")))?;
        let expires_at = Timestamp::now()
            .checked_add(SIGN_IN_TTL)
            .unwrap_or(Timestamp::MAX);
        self.store
            .insert_sign_in(&shipgate_core::secret::hash(&state), &payload, expires_at)
            .await?;
        Ok((url.to_string(), state))
    }

    /// Finishes a sign-in at its callback: takes the sign-in of `state` (once), trades `code`
    /// for tokens and checks the ID token.
    pub(crate) async fn finish(
        &self,
        code: &str,
        state: &str,
        via: Via,
    ) -> Result<Finished, SignInError> {
        let payload = self
            .store
            .take_sign_in(&shipgate_core::secret::hash(state))
            .await?
            .ok_or(SignInError::UnknownState)?;
        let pending: Pending =
            serde_json::from_str(&payload).map_err(|_| SignInError::UnknownState)?;
        if pending.via != via {
            return Err(SignInError::UnknownState);
        }
        let tokens = self
            .token_call(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &pending.redirect_uri),
                ("code_verifier", &pending.verifier),
            ])
            .await?;
        let person = self.person(tokens, Some(&pending.nonce)).await?;
        Ok(Finished {
            person,
            next: pending.next,
        })
    }

    /// A fresh ID token for the person of `refresh_token`, with their groups of now.
    pub(crate) async fn refresh(&self, refresh_token: &str) -> Result<Person, SignInError> {
        let tokens = self
            .token_call(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .await?;
        let mut person = self.person(tokens, None).await?;
        // Providers that do not rotate refresh tokens send none back: the old one still works.
        person
            .refresh_token
            .get_or_insert_with(|| refresh_token.to_owned());
        Ok(person)
    }

    /// The grant of `person` under this provider's `[server.oidc.roles]` (see [`grant_of`]).
    pub(crate) fn grant(&self, person: &Person) -> Result<Grant, SignInError> {
        grant_of(&self.config, person)
    }

    /// Posts `form` to the token endpoint as this client.
    async fn token_call(&self, form: &[(&str, &str)]) -> Result<Tokens, SignInError> {
        let discovery = self.discovery().await?;
        let secret = self
            .config
            .client_secret_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .filter(|s| !s.is_empty());
        let mut form: Vec<(&str, &str)> = form.to_vec();
        let request = self.http.post(&discovery.token_endpoint);
        let request = match &secret {
            // RFC 6749 2.3.1: both form-encoded, then Basic.
            Some(secret) => request.basic_auth(
                form_encode(&self.config.client_id),
                Some(form_encode(secret)),
            ),
            None => {
                form.push(("client_id", &self.config.client_id));
                request
            }
        };
        let response = request.form(&form).send().await.map_err(|e| {
            SignInError::Unreachable(format!(
                "the provider's token endpoint {} did not answer: {e}",
                discovery.token_endpoint
            ))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            SignInError::Unreachable(format!("reading the provider's token answer: {e}"))
        })?;
        if !status.is_success() {
            let said: Value = serde_json::from_slice(&body).unwrap_or_default();
            let error = said["error"].as_str().unwrap_or("no error code");
            let description = said["error_description"]
                .as_str()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let hint = if error == "invalid_client" {
                "check client_id and the secret in client_secret_env"
            } else {
                "sign in again"
            };
            let message = format!("the provider refused the sign-in: {error}{description}; {hint}");
            return Err(if status.is_server_error() {
                SignInError::Unreachable(message)
            } else {
                SignInError::Refused(message)
            });
        }
        serde_json::from_slice(&body).map_err(|e| {
            SignInError::Unreachable(format!("the provider's token answer is not JSON ({e})"))
        })
    }

    /// The person of a token answer, its ID token checked (the nonce only at a sign-in).
    async fn person(&self, tokens: Tokens, nonce: Option<&str>) -> Result<Person, SignInError> {
        let Some(id_token) = tokens.id_token else {
            return Err(SignInError::Refused(
                "the provider answered without an ID token: make sure `scopes` holds \"openid\" \
                 and the client may use the authorization code flow"
                    .to_owned(),
            ));
        };
        let claims = self.verify(&id_token, nonce).await?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let sub = text("sub").ok_or(jwt::JwtError::MissingClaim("sub"))?;
        let groups_claim = &self.config.groups_claim;
        let groups = match jwt::claim_strings(&claims, groups_claim) {
            Some(groups) => groups,
            None if jwt::overage(&claims, groups_claim) => return Err(SignInError::Overage),
            None => Vec::new(),
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .and_then(|exp| Timestamp::from_second(exp).ok())
            .ok_or(jwt::JwtError::MissingClaim("exp"))?;
        Ok(Person {
            sub,
            name: text("name").or_else(|| text("preferred_username")),
            email: text("email"),
            groups,
            refresh_token: tokens.refresh_token,
            expires_at,
        })
    }

    /// Checks an ID token with the provider's keys, fetching them again once if it names a key
    /// the set lacks (the provider rotated them).
    async fn verify(
        &self,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, SignInError> {
        let discovery = self.discovery().await?;
        let expect = jwt::Expect {
            issuer: &discovery.issuer,
            audience: &self.config.client_id,
            nonce,
            now: Timestamp::now(),
            leeway_secs: LEEWAY_SECS,
        };
        let mut keys = self.keys.lock().await;
        let (set, refetched) = match keys.take() {
            Some(kept) => kept,
            None => (self.fetch_keys(&discovery).await?, None),
        };
        let first = jwt::verify(id_token, &set, &expect);
        let may_refetch = refetched.is_none_or(|at: Instant| at.elapsed() >= JWKS_REFETCH);
        let (set, refetched, checked) = match first {
            Err(jwt::JwtError::UnknownKey(_)) if may_refetch => {
                let set = self.fetch_keys(&discovery).await?;
                let checked = jwt::verify(id_token, &set, &expect);
                (set, Some(Instant::now()), checked)
            }
            other => (set, refetched, other),
        };
        *keys = Some((set, refetched));
        Ok(checked?)
    }

    async fn fetch_keys(&self, discovery: &Discovery) -> Result<jwt::Jwks, SignInError> {
        let body = self.get(&discovery.jwks_uri, "key set (jwks_uri)").await?;
        Ok(jwt::Jwks::parse(&body)?)
    }

    /// The discovery document, fetched once and kept (not kept when the fetch fails).
    async fn discovery(&self) -> Result<Discovery, SignInError> {
        let mut kept = self.discovery.lock().await;
        if let Some(d) = kept.as_ref() {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let body = self.get(&url, "discovery document").await?;
        let discovery: Discovery = serde_json::from_slice(&body).map_err(|e| {
            SignInError::Unreachable(format!(
                "the provider's discovery document {url} is not what OpenID Connect describes \
                 ({e}): check `issuer` in [server.oidc]"
            ))
        })?;
        if discovery.issuer.trim_end_matches('/') != self.config.issuer {
            return Err(SignInError::Unreachable(format!(
                "the provider at {url} says its issuer is `{}`: set `issuer` in [server.oidc] \
                 to exactly that",
                discovery.issuer
            )));
        }
        *kept = Some(discovery.clone());
        Ok(discovery)
    }

    async fn get(&self, url: &str, what: &str) -> Result<bytes::Bytes, SignInError> {
        let unreachable = |e: String| {
            SignInError::Unreachable(format!(
                "the identity provider's {what} at {url} could not be read ({e}): check `issuer` \
                 in [server.oidc] and that this server reaches the provider"
            ))
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unreachable(format!("it answered {}", response.status())));
        }
        response
            .bytes()
            .await
            .map_err(|e| unreachable(e.to_string()))
    }
}

/// The grant of `person`: their roles from their groups, the first in `role`, the others in
/// `also`, their `sub` as the person; refused when no group maps to one.
fn grant_of(config: &OidcConfig, person: &Person) -> Result<Grant, SignInError> {
    let mut bindings = config.bindings(&person.groups).into_iter();
    let Some(first) = bindings.next() else {
        let groups = if person.groups.is_empty() {
            "none".to_owned()
        } else {
            person.groups.join(", ")
        };
        return Err(SignInError::Unmapped {
            who: person.display().to_owned(),
            groups,
            mapped: config.mapped_groups().join(", "),
        });
    };
    Ok(Grant {
        name: person.display().to_owned(),
        role: first.role,
        envs: first.envs,
        person: Some(person.sub.clone()),
        also: bindings.collect(),
    })
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config() -> OidcConfig {
        let src = "[server.oidc]\nissuer = \"https://id.example.com\"\nclient_id = \"shipgate\"\n[server.oidc.roles]\n\"platform\" = \"admin\"\n\"developers\" = { role = \"deployer\", envs = [\"development\"] }\n[apps.web]\nrun = \"./web\"\n[environments.development]\nlisten = \"127.0.0.1:8101\"\n";
        shipgate_core::Config::parse(src, Path::new("/tmp"))
            .unwrap()
            .server
            .oidc
            .unwrap()
    }

    fn ada(groups: &[&str], email: Option<&str>) -> Person {
        Person {
            sub: "ada-sub".to_owned(),
            name: Some("Ada Lovelace".to_owned()),
            email: email.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            refresh_token: None,
            expires_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_person_gets_every_role_of_their_groups_and_is_their_sub() {
        let grant = grant_of(
            &config(),
            &ada(
                &["developers", "platform", "other"],
                Some("ada@example.com"),
            ),
        )
        .unwrap();
        assert_eq!(grant.name, "ada@example.com");
        assert_eq!(grant.person(), "ada-sub");
        assert_eq!(
            crate::session::roles(&grant),
            ["deployer (development)", "admin"]
        );
        let without_email = grant_of(&config(), &ada(&["platform"], None)).unwrap();
        assert_eq!(without_email.name, "Ada Lovelace");
    }

    #[test]
    fn a_person_without_a_mapped_group_is_told_which_groups_would_do() {
        let refused = grant_of(
            &config(),
            &ada(&["marketing", "sales"], Some("ada@example.com")),
        )
        .unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused.to_string(),
            "you signed in as ada@example.com, but none of your groups (marketing, sales) maps to \
             a role in shipgate; ask an admin to map one in [server.oidc.roles] (mapped: \
             developers, platform)"
        );
        let none = grant_of(&config(), &ada(&[], Some("ada@example.com"))).unwrap_err();
        assert!(
            none.to_string().contains("none of your groups (none)"),
            "{none}"
        );
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("shipgate"), "shipgate");
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
    }
}
