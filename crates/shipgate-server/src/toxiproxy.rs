//! A Toxiproxy-compatible REST API for the dependency proxies, at `server.toxiproxy_listen`
//! (default 127.0.0.1:8474, the port Toxiproxy clients expect), so that existing Toxiproxy
//! clients (toxiproxy-python, chaostoolkit-toxiproxy, …) drive shipgate's proxies unchanged:
//! `GET /version`, `POST /reset`, `GET /proxies`, `GET|POST /proxies/{name}`,
//! `GET|POST /proxies/{name}/toxics`, `GET|POST|DELETE /proxies/{name}/toxics/{toxic}`.
//! Proxies come from the config (`[environments.ENV.dependencies.NAME]`, named `ENV.NAME`), so
//! creating or deleting one is refused with a message saying so.
//!
//! Unlike Toxiproxy it is guarded, since its proxies stand before production's dependencies:
//! - every call needs a token: `Authorization: Bearer TOKEN`, or HTTP Basic with the token as
//!   the password, which is how the Toxiproxy clients (plain `requests`) can send one: a netrc
//!   entry (`machine 127.0.0.1 login shipgate password TOKEN`) or `shipgate:TOKEN@` in the URL;
//! - a change needs a deployer of the proxy's environment where `chaos.allow` is set, and an
//!   admin at the end of the flow ([`shipgate_core::chaos::may_fault`]); a token sees only the
//!   proxies of its environments;
//! - the `Host` header must name the API's own address, so a web page cannot drive it through
//!   a DNS name that points at loopback;
//! - every toxic, and a proxy taken down, ends by itself after `chaos.max_duration`, is recorded
//!   with the token that made it, and shows in `shipgate chaos list`.
//!
//! No environment's process can reach it: the network fence keeps its port out of every
//! environment's reach.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};
use shipgate_core::EventKind;
use shipgate_core::Grant;
use shipgate_core::chaos::DependencyProxy;
use shipgate_engine::Engine;
use shipgate_engine::chaos::{ProxyRefusal, toxic_from};

/// The Toxiproxy version whose API this follows.
const VERSION: &str = "2.12.0";

type Engine_ = State<Arc<Engine>>;

fn problem(r: ProxyRefusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "error": r.message, "status": r.status })),
    )
        .into_response()
}

fn shown(p: &DependencyProxy) -> Value {
    json!({
        "name": p.name,
        "listen": p.listen.to_string(),
        "upstream": p.upstream,
        "enabled": p.enabled,
        "toxics": p.toxics,
    })
}

/// Serves the API when some environment has dependencies; the task ends with the server.
pub(crate) async fn serve(
    engine: &Arc<Engine>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let config = engine.config();
    if config
        .environments
        .iter()
        .all(|e| e.dependencies.is_empty())
    {
        return Ok(None);
    }
    let at = config.server.toxiproxy_listen;
    let listener = tokio::net::TcpListener::bind(at).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {at} for the Toxiproxy API of the dependency proxies ({e}); is a Toxiproxy running there? change `toxiproxy_listen` in [server]"
        )
    })?;
    tracing::info!("Toxiproxy API of the dependency proxies on http://{at}");
    let app = routes(engine).with_state(Arc::clone(engine));
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the Toxiproxy API stopped: {e}");
        }
    })))
}

/// Lets a call through only with `Host` naming this API and a known token, whose grant goes
/// along to the handler.
async fn guard(State(engine): Engine_, mut request: Request, next: Next) -> Response {
    let listen = engine.config().server.toxiproxy_listen;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !own_host(host, listen) {
        return problem(ProxyRefusal {
            status: 421,
            message: format!(
                "this Toxiproxy API answers only as {listen}, not as `{host}`; call it at http://{listen}"
            ),
        });
    }
    let Some(token) = presented(request.headers()) else {
        let mut refused = problem(ProxyRefusal {
            status: 401,
            message: "a token is required: send `Authorization: Bearer TOKEN`, or HTTP Basic with the token as the password (a netrc line `machine 127.0.0.1 login shipgate password TOKEN`, or http://shipgate:TOKEN@HOST:PORT); shipgate token create NAME --role deployer --env ENV makes one".into(),
        });
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"shipgate toxiproxy\""),
        );
        return refused;
    };
    match engine
        .store()
        .token_by_hash(&shipgate_core::secret::hash(&token))
        .await
    {
        Ok(Some(record)) => {
            request.extensions_mut().insert(record.grant());
            next.run(request).await
        }
        Ok(None) => problem(ProxyRefusal {
            status: 401,
            message: "this token is not known to the server (or was revoked); ask an admin for one (shipgate token create)".into(),
        }),
        Err(e) => problem(ProxyRefusal {
            status: 500,
            message: e.to_string(),
        }),
    }
}

/// Whether `host` (a `Host` header) names `listen`: its own address, or `localhost` on it
/// when it listens on loopback.
fn own_host(host: &str, listen: std::net::SocketAddr) -> bool {
    if host == listen.to_string() {
        return true;
    }
    let port = listen.port();
    listen.ip().is_loopback()
        && [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]
        .iter()
        .any(|h| h == host)
}

/// The token of `Authorization: Bearer TOKEN` or `Basic base64(user:TOKEN)` (the password; the
/// user name when there is no password).
fn presented(headers: &header::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    let token = if password.is_empty() { user } else { password };
    (!token.is_empty()).then(|| token.to_owned())
}

fn routes(engine: &Arc<Engine>) -> Router<Arc<Engine>> {
    Router::new()
        .route("/version", get(version))
        .route("/reset", post(reset))
        .route("/proxies", get(proxies).post(create_proxy))
        .route("/populate", post(create_proxy))
        .route(
            "/proxies/{proxy}",
            get(proxy).post(update_proxy).delete(delete_proxy),
        )
        .route("/proxies/{proxy}/toxics", get(toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(toxic).post(update_toxic).delete(remove_toxic),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(engine),
            guard,
        ))
}

async fn version() -> impl IntoResponse {
    VERSION
}

type Caller = Extension<Grant>;

async fn reset(State(engine): Engine_, Extension(grant): Caller) -> Response {
    match engine.reset_proxies(&grant).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => problem(r),
    }
}

async fn proxies(State(engine): Engine_, Extension(grant): Caller) -> Response {
    let all: serde_json::Map<String, Value> = engine
        .readable_proxies(&grant)
        .iter()
        .map(|p| (p.name.clone(), shown(p)))
        .collect();
    Json(all).into_response()
}

async fn create_proxy(State(engine): Engine_, body: Option<Json<Value>>) -> Response {
    let name = body
        .as_ref()
        .and_then(|b| b.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if engine.dependency_proxy(&name).is_ok() {
        return problem(ProxyRefusal {
            status: 409,
            message: format!("proxy already exists: `{name}`"),
        });
    }
    problem(ProxyRefusal {
        status: 400,
        message: "shipgate's proxies come from the config: declare [environments.ENV.dependencies.NAME] with listen and upstream; the proxy is ENV.NAME".into(),
    })
}

async fn delete_proxy(State(engine): Engine_, Path(name): Path<String>) -> Response {
    if let Err(r) = engine.dependency_proxy(&name) {
        return problem(r);
    }
    problem(ProxyRefusal {
        status: 400,
        message: format!(
            "`{name}` comes from the config, so it is not deleted; take it down with {{\"enabled\": false}}, or remove it from the config"
        ),
    })
}

async fn proxy(
    State(engine): Engine_,
    Extension(grant): Caller,
    Path(name): Path<String>,
) -> Response {
    match engine.readable_proxy(&name, &grant) {
        Ok(p) => Json(shown(&p)).into_response(),
        Err(r) => problem(r),
    }
}

/// `{"enabled": false}` takes the proxy down (`down`), `true` up again; its addresses come
/// from the config.
async fn update_proxy(
    State(engine): Engine_,
    Extension(grant): Caller,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let enabled = body.get("enabled").and_then(Value::as_bool);
    let changed = engine
        .change_proxy(&name, &grant, |p| {
            for (key, now) in [
                ("listen", p.listen.to_string()),
                ("upstream", p.upstream.clone()),
            ] {
                if let Some(asked) = body.get(key).and_then(Value::as_str)
                    && asked != now
                {
                    return Err(ProxyRefusal {
                        status: 400,
                        message: format!(
                            "the {key} of `{}` comes from the config ({now}); change it there",
                            p.name
                        ),
                    });
                }
            }
            if let Some(enabled) = enabled {
                p.enabled = enabled;
            }
            Ok(if p.enabled {
                (EventKind::ChaosEnded, "up".to_owned())
            } else {
                (
                    EventKind::ChaosInjected,
                    "down: no listener, every connection closed".to_owned(),
                )
            })
        })
        .await;
    match changed {
        Ok(p) => Json(shown(&p)).into_response(),
        Err(r) => problem(r),
    }
}

async fn toxics(
    State(engine): Engine_,
    Extension(grant): Caller,
    Path(name): Path<String>,
) -> Response {
    match engine.readable_proxy(&name, &grant) {
        Ok(p) => Json(p.toxics).into_response(),
        Err(r) => problem(r),
    }
}

async fn add_toxic(
    State(engine): Engine_,
    Extension(grant): Caller,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let toxic = match toxic_from(body) {
        Ok(t) => t,
        Err(r) => return problem(r),
    };
    let added = toxic.clone();
    let changed = engine
        .change_proxy(&name, &grant, move |p| {
            if p.toxics.iter().any(|t| t.name == toxic.name) {
                return Err(ProxyRefusal {
                    status: 409,
                    message: format!("toxic already exists: `{}`", toxic.name),
                });
            }
            let said = format!(
                "toxic {} added ({} {}, toxicity {}, {})",
                toxic.name,
                toxic.kind,
                toxic.stream.as_str(),
                toxic.toxicity,
                Value::Object(toxic.attributes.clone())
            );
            p.toxics.push(toxic);
            Ok((EventKind::ChaosInjected, said))
        })
        .await;
    match changed {
        Ok(_) => Json(added).into_response(),
        Err(r) => problem(r),
    }
}

async fn toxic(
    State(engine): Engine_,
    Extension(grant): Caller,
    Path((name, toxic)): Path<(String, String)>,
) -> Response {
    match engine.readable_proxy(&name, &grant) {
        Ok(p) => match p.toxics.into_iter().find(|t| t.name == toxic) {
            Some(t) => Json(t).into_response(),
            None => problem(ProxyRefusal {
                status: 404,
                message: format!("toxic not found: `{toxic}`"),
            }),
        },
        Err(r) => problem(r),
    }
}

/// Changes a toxic's attributes or toxicity (what the body names; the rest stays).
async fn update_toxic(
    State(engine): Engine_,
    Extension(grant): Caller,
    Path((name, toxic)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let mut updated = None;
    let changed = engine
        .change_proxy(&name, &grant, |p| {
            let Some(at) = p.toxics.iter().position(|t| t.name == toxic) else {
                return Err(ProxyRefusal {
                    status: 404,
                    message: format!("toxic not found: `{toxic}`"),
                });
            };
            let mut merged = serde_json::to_value(&p.toxics[at]).unwrap_or(Value::Null);
            if let (Some(into), Some(from)) = (merged.as_object_mut(), body.as_object()) {
                for (key, value) in from {
                    if key == "attributes"
                        && let (Some(Value::Object(old)), Value::Object(new)) =
                            (into.get_mut("attributes"), value)
                    {
                        old.extend(new.clone());
                        continue;
                    }
                    into.insert(key.clone(), value.clone());
                }
            }
            let t = toxic_from(merged)?;
            let said = format!(
                "toxic {} changed ({})",
                t.name,
                Value::Object(t.attributes.clone())
            );
            p.toxics[at] = t.clone();
            updated = Some(t);
            Ok((EventKind::ChaosInjected, said))
        })
        .await;
    match (changed, updated) {
        (Ok(_), Some(t)) => Json(t).into_response(),
        (Err(r), _) => problem(r),
        (Ok(_), None) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn remove_toxic(
    State(engine): Engine_,
    Extension(grant): Caller,
    Path((name, toxic)): Path<(String, String)>,
) -> Response {
    let changed = engine
        .change_proxy(&name, &grant, |p| {
            let before = p.toxics.len();
            p.toxics.retain(|t| t.name != toxic);
            if p.toxics.len() == before {
                return Err(ProxyRefusal {
                    status: 404,
                    message: format!("toxic not found: `{toxic}`"),
                });
            }
            Ok((EventKind::ChaosEnded, format!("toxic {toxic} removed")))
        })
        .await;
    match changed {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => problem(r),
    }
}
