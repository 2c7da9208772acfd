//! A Toxiproxy-compatible REST API for the dependency proxies, at `server.toxiproxy_listen`
//! (default 127.0.0.1:8474, the port Toxiproxy clients expect), so that existing Toxiproxy
//! clients (toxiproxy-python, chaostoolkit-toxiproxy, …) drive shipgate's proxies unchanged:
//! `GET /version`, `POST /reset`, `GET /proxies`, `GET|POST /proxies/{name}`,
//! `GET|POST /proxies/{name}/toxics`, `GET|POST|DELETE /proxies/{name}/toxics/{toxic}`.
//! Proxies come from the config (`[environments.ENV.dependencies.NAME]`, named `ENV.NAME`), so
//! creating or deleting one is refused with a message saying so. Like Toxiproxy it takes no
//! token, which is why it listens on loopback unless told otherwise; every change through it
//! is still an audit event, by `toxiproxy-api`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use shipgate_core::EventKind;
use shipgate_core::chaos::DependencyProxy;
use shipgate_engine::Engine;
use shipgate_engine::chaos::{ProxyRefusal, toxic_from};

/// The actor of changes made through this API.
const ACTOR: &str = "toxiproxy-api";
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
    let app = routes().with_state(Arc::clone(engine));
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the Toxiproxy API stopped: {e}");
        }
    })))
}

fn routes() -> Router<Arc<Engine>> {
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
}

async fn version() -> impl IntoResponse {
    VERSION
}

async fn reset(State(engine): Engine_) -> Response {
    match engine.reset_proxies(ACTOR).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => problem(r),
    }
}

async fn proxies(State(engine): Engine_) -> Response {
    let all: serde_json::Map<String, Value> = engine
        .dependency_proxies()
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

async fn proxy(State(engine): Engine_, Path(name): Path<String>) -> Response {
    match engine.dependency_proxy(&name) {
        Ok(p) => Json(shown(&p)).into_response(),
        Err(r) => problem(r),
    }
}

/// `{"enabled": false}` takes the proxy down (`down`), `true` up again; its addresses come
/// from the config.
async fn update_proxy(
    State(engine): Engine_,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let enabled = body.get("enabled").and_then(Value::as_bool);
    let changed = engine
        .change_proxy(&name, ACTOR, |p| {
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

async fn toxics(State(engine): Engine_, Path(name): Path<String>) -> Response {
    match engine.dependency_proxy(&name) {
        Ok(p) => Json(p.toxics).into_response(),
        Err(r) => problem(r),
    }
}

async fn add_toxic(
    State(engine): Engine_,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let toxic = match toxic_from(body) {
        Ok(t) => t,
        Err(r) => return problem(r),
    };
    let added = toxic.clone();
    let changed = engine
        .change_proxy(&name, ACTOR, move |p| {
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

async fn toxic(State(engine): Engine_, Path((name, toxic)): Path<(String, String)>) -> Response {
    match engine.dependency_proxy(&name) {
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
    Path((name, toxic)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let mut updated = None;
    let changed = engine
        .change_proxy(&name, ACTOR, |p| {
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
    Path((name, toxic)): Path<(String, String)>,
) -> Response {
    let changed = engine
        .change_proxy(&name, ACTOR, |p| {
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
