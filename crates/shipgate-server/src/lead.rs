//! Which server runs the engine. Every server on one database competes for the engine's lease
//! (see `Store::acquire_lease`); the one holding it leads, renews it a few times per lease
//! length, and hands the engine a store fenced by it, so that once the lease is lost, even
//! while this process still believes it leads, the database accepts none of its writes. A
//! server that cannot renew stops: the next leader reconciles from the store.
//!
//! While another server leads, this one stands by on its API address: `/healthz` answers 503
//! naming the leader, and every other request is passed on to the leader (503, saying where
//! to go, while the leader does not answer, so a client given several servers moves on to the
//! next). [`Switch`] changes what the address answers without closing it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use shipgate_store::{Lease, Store};
use tokio::sync::watch;

use crate::problem::Problem;

/// This server's name in the lease: its host name and data dir. No two running servers share
/// one (the data dir is locked while a server runs), and a server started again on the same
/// data dir, after a kill -9 say, takes its lease back at once instead of waiting it out: the
/// process that held it is gone, or the lock would not have been given.
pub(crate) fn server_name(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}", data_dir.display())
}

/// One line about who leads, for `/healthz` and the log.
pub(crate) fn describe(lease: &Lease) -> String {
    format!(
        "{} at {} leads since {} (epoch {})",
        lease.holder,
        lease.address,
        lease.since.strftime("%Y-%m-%d %H:%M:%S UTC"),
        lease.epoch
    )
}

/// What the API address answers: the standby's routes, then the starting server's, then the
/// whole API. One listener and one `axum::serve` throughout, so nobody is refused in between.
#[derive(Clone)]
pub(crate) struct Switch {
    router: Arc<std::sync::RwLock<Router>>,
    /// True while the server starts its engine: requests wait for it rather than get a 503.
    starting: Arc<watch::Sender<bool>>,
}

/// How long a request waits for a starting server (a reload takes well under a second).
const HOLD_WHILE_STARTING: Duration = Duration::from_secs(15);

impl Switch {
    /// A switch that answers with `first`, a server starting its engine.
    pub(crate) fn starting(first: Router) -> Self {
        Self {
            router: Arc::new(std::sync::RwLock::new(first)),
            starting: Arc::new(watch::Sender::new(true)),
        }
    }

    fn put(&self, router: Router, starting: bool) {
        *self
            .router
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = router;
        self.starting.send_replace(starting);
    }

    /// Answers with `router` from now on.
    pub(crate) fn set(&self, router: Router) {
        self.put(router, false);
    }

    /// Answers with `router` (a server starting its engine), but only to requests that waited
    /// [`HOLD_WHILE_STARTING`] in vain for the next router (and `/healthz` and agents asking
    /// for their endpoint, at once).
    pub(crate) fn set_starting(&self, router: Router) {
        self.put(router, true);
    }

    /// The service to serve: each request goes to the router set at the time.
    pub(crate) fn app(&self) -> Router {
        let router = Arc::clone(&self.router);
        let starting = Arc::clone(&self.starting);
        Router::new().fallback_service(tower::service_fn(move |request: axum::extract::Request| {
            let router = Arc::clone(&router);
            let mut starting = starting.subscribe();
            async move {
                // Agents ask for their endpoint before the engine starts: never held.
                let answered_at_once =
                    ["/healthz", "/api/v1/hosts/endpoint"].contains(&request.uri().path());
                if *starting.borrow_and_update() && !answered_at_once {
                    let _ = tokio::time::timeout(
                        HOLD_WHILE_STARTING,
                        starting.wait_for(|starting| !*starting),
                    )
                    .await;
                }
                let router = router
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                tower::ServiceExt::oneshot(router, request).await
            }
        }))
    }
}

/// Takes the lease for this server (its API at `address`), standing by meanwhile: `switch`
/// answers as a standby that names the leader until then.
pub(crate) async fn take(
    store: &Arc<dyn Store>,
    me: &str,
    address: &str,
    switch: &Switch,
    length: Duration,
) -> anyhow::Result<Lease> {
    if let Some(lease) = store.acquire_lease(me, address, length).await? {
        return Ok(lease);
    }
    let (leader_tx, leader_rx) = watch::channel(store.lease().await?);
    switch.set(standby_routes(leader_rx, length));
    let mut said = None;
    let lease = loop {
        if let Some(lease) = store.acquire_lease(me, address, length).await? {
            break lease;
        }
        let leader = store.lease().await?;
        if let Some(l) = &leader
            && said.as_ref() != Some(&(l.holder.clone(), l.epoch))
        {
            tracing::info!(
                "standing by: {}; this server takes over if that lease of {length:?} ends",
                describe(l)
            );
            said = Some((l.holder.clone(), l.epoch));
        }
        let _ = leader_tx.send(leader);
        tokio::time::sleep(length / 4).await;
    };
    tracing::info!("this server leads now: {}", describe(&lease));
    Ok(lease)
}

fn unavailable(detail: String) -> axum::response::Response {
    let mut response =
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not the leader", detail).into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

/// Marks a request a standby passed on, so that it is never passed on twice.
const FORWARDED: &str = "x-shipgate-forwarded-by";

pub(crate) type Forwarder = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    axum::body::Body,
>;

/// Passes `request` on to the leader at `leader` (`http://HOST:PORT`) and streams its answer
/// back: the API, the dashboard and its event stream alike.
async fn forward(
    client: &Forwarder,
    leader: &str,
    request: axum::extract::Request,
) -> Result<axum::response::Response, String> {
    let mut request = request;
    request
        .headers_mut()
        .insert(FORWARDED, axum::http::HeaderValue::from_static("standby"));
    pass_on(client, leader, request)
        .await
        .map_err(|e| format!("the leader at {leader} does not answer ({e})"))
}

/// Sends `request` to `to` (`http://HOST:PORT`) without its hop-by-hop headers, and streams
/// the answer back.
pub(crate) async fn pass_on(
    client: &Forwarder,
    to: &str,
    request: axum::extract::Request,
) -> Result<axum::response::Response, String> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str);
    parts.uri = format!("{to}{path}")
        .parse()
        .map_err(|e| format!("the address {to}: {e}"))?;
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ] {
        parts.headers.remove(hop);
    }
    // Whatever the client spoke, the leader is asked in HTTP/1.1.
    parts.version = axum::http::Version::HTTP_11;
    let answer = client
        .request(axum::http::Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.map(axum::body::Body::new))
}

/// A standby answers like the leader: it passes every request on to it. Only `/healthz` is its
/// own (503, naming the leader, so that a load balancer prefers the leader), and where agents
/// dial is not passed on (an agent must find the leader itself, by its own address).
fn standby_routes(leader: watch::Receiver<Option<Lease>>, length: Duration) -> Router {
    let said = {
        let leader = leader.clone();
        move || {
            let leader = leader.borrow().clone();
            match leader {
                Some(l) => format!(
                    "this server stands by: {}, and passes requests on to it; this server takes over if that lease of {}s ends",
                    describe(&l),
                    length.as_secs()
                ),
                None => "this server stands by until it takes the engine's lease".to_owned(),
            }
        }
    };
    let health = said.clone();
    let endpoint = said.clone();
    let client: Forwarder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || async move {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    format!("standby: {}\n", health()),
                )
            }),
        )
        .route(
            "/api/v1/hosts/endpoint",
            axum::routing::get(move || async move { unavailable(endpoint()) }),
        )
        .fallback(move |request: axum::extract::Request| {
            let (client, said) = (client.clone(), said.clone());
            let leader = leader.borrow().clone();
            async move {
                let Some(leader) = leader.filter(|_| !request.headers().contains_key(FORWARDED))
                else {
                    return unavailable(said());
                };
                match forward(&client, &leader.address, request).await {
                    Ok(answer) => answer,
                    Err(e) => unavailable(format!("{e}; {}", said())),
                }
            }
        })
}

/// While a server that took the lease starts its engine (and waits for its hosts to connect),
/// agents may already ask where to dial; everything else waits for the API.
pub(crate) fn starting_routes(agent_port: Option<u16>) -> Router {
    let router = match agent_port {
        Some(agent_port) => Router::new().route(
            "/api/v1/hosts/endpoint",
            axum::routing::get(move || async move {
                axum::Json(shipgate_api::answers::AgentEndpoint { agent_port })
            }),
        ),
        None => Router::new(),
    };
    router
        .route(
            "/healthz",
            axum::routing::get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    "starting: this server is starting its engine\n",
                )
            }),
        )
        .fallback(|| async {
            unavailable("this server is starting its engine; try again in a moment".to_owned())
        })
}

/// Renews `lease` every third of its length for as long as it holds, until the returned task
/// is aborted (the server stopped). The receiver shows the lease as last renewed, and changes
/// to `None` once it is lost.
pub(crate) fn keep(
    store: Arc<dyn Store>,
    lease: Lease,
    length: Duration,
) -> (watch::Receiver<Option<Lease>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Some(lease.clone()));
    let renewing = tokio::spawn(async move {
        let mut held = lease;
        loop {
            tokio::time::sleep(length / 3).await;
            match store.renew_lease(&held, length).await {
                Ok(Some(renewed)) => {
                    held = renewed;
                    let _ = tx.send(Some(held.clone()));
                }
                Ok(None) => {
                    tracing::error!(
                        "this server lost the engine's lease (epoch {}): another server may lead now, and the database refuses this one's writes; stopping",
                        held.epoch
                    );
                    let _ = tx.send(None);
                    return;
                }
                // The database may be back before the lease ends: try again until then.
                Err(e) if jiff::Timestamp::now() < held.expires_at => {
                    tracing::warn!("could not renew the engine's lease, trying again: {e}");
                }
                Err(e) => {
                    tracing::error!(
                        "could not renew the engine's lease before it ended ({e}); stopping"
                    );
                    let _ = tx.send(None);
                    return;
                }
            }
        }
    });
    (rx, renewing)
}
