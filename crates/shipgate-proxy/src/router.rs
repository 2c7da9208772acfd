use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ProxyError;
use crate::forwarding::{Gateway, Route};
use crate::metrics::{ReleaseMetrics, UpstreamMetrics};
use crate::upstream::Upstream;

/// How often `drain` looks at an upstream's in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Pause after a failed accept, so running out of file descriptors does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The router of one environment: listens on the environment's stable address and forwards each
/// request to the live upstream of the app it is for. Clients may speak HTTP/1.1 (keep-alive,
/// `Upgrade` such as WebSocket) or HTTP/2 with prior knowledge (h2c); upstreams are spoken to
/// over pooled HTTP/1.1 connections.
#[derive(Debug)]
pub struct Router {
    local_addr: SocketAddr,
    gateway: Arc<Gateway>,
    /// Signals the accept loop and every connection to stop; dropping it does the same.
    stop: watch::Sender<()>,
    accepting: Mutex<Option<JoinHandle<()>>>,
}

impl Router {
    /// Binds `addr` and starts serving in a background tokio task.
    pub async fn bind(addr: SocketAddr, env: impl Into<String>) -> Result<Router, ProxyError> {
        let env = env.into();
        let bind_error = |source| ProxyError::Bind {
            addr,
            env: env.clone(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        tracing::info!(%env, %local_addr, "router listening");
        let gateway = Arc::new(Gateway::new(env));
        let (stop, stopping) = watch::channel(());
        let accepting = tokio::spawn(accept(listener, gateway.clone(), stopping));
        Ok(Router {
            local_addr,
            gateway,
            stop,
            accepting: Mutex::new(Some(accepting)),
        })
    }

    /// The address the router listens on (useful when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Atomically replaces the upstream of `app` (None removes it); returns the previous one.
    /// Requests that start after this call go to the new upstream; requests in flight on the old
    /// one continue.
    pub fn switch(&self, app: &str, upstream: Option<Upstream>) -> Option<Upstream> {
        let to = upstream.as_ref().map_or("nothing", Upstream::label);
        tracing::info!(env = %self.gateway.env, app, to, "switching");
        let route = upstream.map(|upstream| Route {
            metrics: self.gateway.metrics.release(app, upstream.label()),
            upstream,
        });
        let mut routes = self
            .gateway
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = match route {
            Some(route) => routes.apps.insert(app.to_owned(), route),
            None => routes.apps.remove(app),
        };
        previous.map(|route| route.upstream)
    }

    /// The upstream `app` is currently routed to.
    pub fn current(&self, app: &str) -> Option<Upstream> {
        let routes = self
            .gateway
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        routes.apps.get(app).map(|route| route.upstream.clone())
    }

    /// Names the apps of the config. A request whose Host names one of them reaches that app
    /// (503 if it is not live here); any other request reaches the first.
    pub fn set_apps<S: AsRef<str>>(&self, apps: &[S]) {
        let mut routes = self
            .gateway
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        routes.known_apps = apps.iter().map(|a| a.as_ref().to_owned()).collect();
        routes.default_app = routes.known_apps.first().cloned();
    }

    /// Sets how long a request may wait, from its dispatch to an upstream until the response head
    /// arrives, before the router answers 504 instead; None (the default) waits as long as it
    /// takes. A response body that has started streaming is never cut. Applies to requests
    /// dispatched after this call.
    pub fn set_request_timeout(&self, timeout: Option<Duration>) {
        self.gateway.set_request_timeout(timeout);
    }

    /// The request timeout in force (see [`Router::set_request_timeout`]).
    pub fn request_timeout(&self) -> Option<Duration> {
        self.gateway.request_timeout()
    }

    /// A snapshot of the request metrics of every release this router has answered for since it
    /// started (live or not), grouped by app; render them with [`crate::render_prometheus`].
    pub fn metrics(&self) -> Vec<UpstreamMetrics> {
        let live: Vec<Arc<ReleaseMetrics>> = {
            let routes = self
                .gateway
                .routes
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let live = routes.apps.values();
            live.map(|route| route.metrics.clone()).collect()
        };
        let releases = self.gateway.metrics.releases();
        releases
            .iter()
            .map(|release| release.snapshot(live.iter().any(|l| Arc::ptr_eq(l, release))))
            .collect()
    }

    /// Waits until `upstream` has no request in flight and no upgraded connection open, or `grace`
    /// has passed; returns true if it drained.
    pub async fn drain(upstream: &Upstream, grace: Duration) -> bool {
        let idle = async {
            while upstream.in_flight() > 0 {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        };
        tokio::time::timeout(grace, idle).await.is_ok()
    }

    /// Stops accepting connections and ends the serving task. The port is free when this returns;
    /// open connections finish the requests they are on and then close. Upgraded connections
    /// (WebSocket) are left to end with their upstream.
    pub async fn shutdown(&self) {
        self.stop.send_replace(());
        let accepting = self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(task) = accepting else { return };
        if let Err(err) = task.await {
            tracing::warn!(env = %self.gateway.env, "router task ended abnormally: {err}");
        }
    }
}

/// Accepts connections until the router stops; the listener is dropped on return.
async fn accept(listener: TcpListener, gateway: Arc<Gateway>, mut stopping: watch::Receiver<()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stopping.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (gateway, stopping) = (gateway.clone(), stopping.clone());
                tokio::spawn(serve(stream, peer, builder.clone(), gateway, stopping));
            }
            Err(err) => {
                tracing::warn!(env = %gateway.env, "cannot accept a connection: {err}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one client connection, HTTP/1.1 or h2c, until it closes, or until the router stops and
/// its current requests are answered.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    gateway: Arc<Gateway>,
    mut stopping: watch::Receiver<()>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "cannot set TCP_NODELAY: {err}");
    }
    let service = service_fn(move |req| {
        let gateway = gateway.clone();
        async move { Ok::<_, Infallible>(gateway.forward(peer.ip(), req).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, "client connection ended: {err}");
    }
}
