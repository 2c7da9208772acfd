use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::ProxyError;
use crate::canary::{Canary, CanaryFigures, Split};
use crate::fast::{self, Served};
use crate::forwarding::{Gateway, Route, RouteTable};
use crate::metrics::{ReleaseMetrics, UpstreamMetrics};
use crate::upstream::Upstream;

/// How often `drain` looks at an upstream's in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Worker threads of one router at most, whatever the number of cores.
const MAX_WORKERS: usize = 8;
/// Pause after a failed accept, so running out of file descriptors does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The router of one environment: listens on the environment's stable address and forwards each
/// request to the live upstream of the app it is for. Clients may speak HTTP/1.1 (keep-alive,
/// `Upgrade` such as WebSocket) or HTTP/2 with prior knowledge (h2c); upstreams are spoken to
/// over pooled HTTP/1.1 connections.
#[derive(Debug)]
pub struct Router {
    local_addr: SocketAddr,
    /// The listening socket, as a second handle to it: handed to a process that keeps it while
    /// this one is replaced (dropped at shutdown, so a closed router's address is free).
    listening: Mutex<Option<std::net::TcpListener>>,
    gateway: Arc<Gateway>,
    /// Signals the accept loop and every connection to stop; dropping it does the same.
    stop: watch::Sender<()>,
    accepting: Mutex<Option<JoinHandle<()>>>,
}

impl Router {
    /// Binds `addr` and starts serving in a background tokio task.
    pub async fn bind(addr: SocketAddr, env: impl Into<String>) -> Result<Router, ProxyError> {
        let env = env.into();
        let listener = TcpListener::bind(addr)
            .await
            .and_then(|l| l.into_std())
            .map_err(|source| ProxyError::Bind {
                addr,
                env: env.clone(),
                source,
            })?;
        Router::serve(listener, env, |_| {})
    }

    /// Serves on `listener` (bound already: by an earlier process whose connections wait in its
    /// queue), after `first` has set its first routes, so no queued request meets a router
    /// without them.
    pub fn serve(
        listener: std::net::TcpListener,
        env: impl Into<String>,
        first: impl FnOnce(&Router),
    ) -> Result<Router, ProxyError> {
        let env = env.into();
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let bind_error = |source| ProxyError::Bind {
            addr,
            env: env.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        let listening = listener.try_clone().map_err(bind_error)?;
        let listener = TcpListener::from_std(listener).map_err(bind_error)?;
        tracing::info!(%env, local_addr = %addr, "router listening");
        let gateway = Arc::new(Gateway::new(env.clone()));
        let (stop, stopping) = watch::channel(());
        let workers = start_workers(&gateway, &stopping).map_err(bind_error)?;
        let router = Router {
            local_addr: addr,
            listening: Mutex::new(Some(listening)),
            gateway,
            stop,
            accepting: Mutex::new(None),
        };
        first(&router);
        let accepting = tokio::spawn(accept(listener, workers, stopping, env));
        *router
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(accepting);
        Ok(router)
    }

    /// The routes, to read (a poisoned lock is taken as it is: they are replaced whole).
    fn read_routes(&self) -> RwLockReadGuard<'_, RouteTable> {
        self.gateway
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The routes, to change.
    fn write_routes(&self) -> RwLockWriteGuard<'_, RouteTable> {
        self.gateway
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle to the listening socket, until the router is shut down.
    pub fn listening(&self) -> Option<std::net::TcpListener> {
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|l| l.try_clone().ok())
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
            side: None,
        });
        let mut routes = self.write_routes();
        routes.starting.remove(app);
        let previous = match route {
            Some(route) => routes.apps.insert(app.to_owned(), route),
            None => routes.apps.remove(app),
        };
        previous.map(|route| route.upstream)
    }

    /// Gives `canary` its share of `app`'s requests (None: no canary, every request to the app's
    /// upstream, and its figures are forgotten); returns the canary before. A tester's
    /// `x-shipgate-canary: always|never` is honoured at any weight, and a client keeps its side
    /// by its pin (see [`shipgate_core::canary::to_canary`] and [`Canary::sticky`]). A canary
    /// with the same `window` as the one before keeps its figures; another window starts both
    /// sides at zero.
    pub fn set_canary(&self, app: &str, canary: Option<Canary>) -> Option<Canary> {
        if let Some(c) = &canary {
            let (to, weight, mirror) = (c.upstream.label(), c.weight, c.mirror);
            tracing::info!(env = %self.gateway.env, app, to, weight, mirror, window = c.window, "setting a canary");
        }
        let mut routes = self.write_routes();
        let before = routes.canaries.get(app).cloned();
        let previous = before.as_ref().map(|split| split.describe());
        match canary {
            Some(canary) => {
                let split = Split::new(app, canary, &self.gateway, before.as_deref());
                routes.canaries.insert(app.to_owned(), Arc::new(split));
            }
            None => {
                routes.canaries.remove(app);
            }
        }
        previous
    }

    /// The canary of `app`, as it was set.
    pub fn canary(&self, app: &str) -> Option<Canary> {
        let routes = self.read_routes();
        routes.canaries.get(app).map(|split| split.describe())
    }

    /// Every app with a canary, and its canary.
    pub fn canaries(&self) -> Vec<(String, Canary)> {
        let routes = self.read_routes();
        routes
            .canaries
            .iter()
            .map(|(app, split)| (app.clone(), split.describe()))
            .collect()
    }

    /// What the canary of `app` and its stable side answered in the canary's current window;
    /// None without a canary.
    pub fn canary_figures(&self, app: &str) -> Option<CanaryFigures> {
        // Counted outside the lock: the guard goes at the end of the statement.
        let split = self.read_routes().canaries.get(app).cloned();
        split.map(|split| split.figures())
    }

    /// Every app routed, with its upstream.
    pub fn routed(&self) -> Vec<(String, Upstream)> {
        let routes = self.read_routes();
        routes
            .apps
            .iter()
            .map(|(app, route)| (app.clone(), route.upstream.clone()))
            .collect()
    }

    /// The upstream `app` is currently routed to.
    pub fn current(&self, app: &str) -> Option<Upstream> {
        let routes = self.read_routes();
        routes.apps.get(app).map(|route| route.upstream.clone())
    }

    /// Says that `label` (`web@1.2.0`) of `app` is being started here, until the next
    /// [`Router::switch`] of that app: requests meanwhile get 503 "starting web@1.2.0".
    pub fn set_starting(&self, app: &str, label: &str) {
        let mut routes = self.write_routes();
        routes.starting.insert(app.to_owned(), label.to_owned());
    }

    /// The upstream of every app routed here now.
    pub fn upstreams(&self) -> Vec<Upstream> {
        let routes = self.read_routes();
        routes.apps.values().map(|r| r.upstream.clone()).collect()
    }

    /// Names the apps of the config. A request whose Host names one of them reaches that app
    /// (503 if it is not live here); any other request reaches the first.
    pub fn set_apps<S: AsRef<str>>(&self, apps: &[S]) {
        let mut routes = self.write_routes();
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

    /// Replaces the HTTP faults in force. Each applies until its `until_ms` by itself.
    pub fn set_faults(&self, faults: Vec<shipgate_core::chaos::HttpFault>) {
        self.gateway.faults.set(faults);
    }

    /// The HTTP faults in force (those whose end has passed included, until replaced).
    pub fn faults(&self) -> Vec<shipgate_core::chaos::HttpFault> {
        self.gateway.faults.list()
    }

    /// The request timeout in force (see [`Router::set_request_timeout`]).
    pub fn request_timeout(&self) -> Option<Duration> {
        self.gateway.request_timeout()
    }

    /// A snapshot of the request metrics of every release this router has answered for since it
    /// started (live or not), grouped by app; render them with [`crate::render_prometheus`].
    pub fn metrics(&self) -> Vec<UpstreamMetrics> {
        let live: Vec<Arc<ReleaseMetrics>> = {
            let routes = self.read_routes();
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
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
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

/// A client connection handed from the accepting task to a worker thread.
type Handoff = (std::net::TcpStream, SocketAddr);

/// Starts one worker thread per core, each with a single-threaded runtime of its own: every
/// worker polls its own sockets, so the router's connections spread over all cores instead of
/// waiting on one shared I/O driver. Returns the channels that hand connections to them.
fn start_workers(
    gateway: &Gateway,
    stopping: &watch::Receiver<()>,
) -> std::io::Result<Vec<mpsc::UnboundedSender<Handoff>>> {
    let count = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_WORKERS);
    let mut senders = Vec::with_capacity(count);
    for index in 0..count {
        let (sender, connections) = mpsc::unbounded_channel();
        let gateway = Arc::new(gateway.for_worker());
        let stopping = stopping.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("router-{}-{index}", gateway.env))
            .spawn(move || runtime.block_on(work(connections, gateway, stopping)))?;
        senders.push(sender);
    }
    Ok(senders)
}

/// A worker: serves the connections it is handed until the router stops, then lets the open
/// ones finish their current requests.
async fn work(
    mut handed: mpsc::UnboundedReceiver<Handoff>,
    gateway: Arc<Gateway>,
    stopping: watch::Receiver<()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = handed.recv() => {
                let Some((stream, peer)) = next else { break };
                match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        let (builder, gateway, stopping) = (builder.clone(), gateway.clone(), stopping.clone());
                        connections.spawn(serve(stream, peer, builder, gateway, stopping));
                    }
                    Err(err) => tracing::warn!(env = %gateway.env, %peer, "cannot take a connection: {err}"),
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

/// Accepts connections until the router stops and hands them to the workers in turn; the
/// listener is dropped on return, and with the channels the workers wind down.
async fn accept(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Handoff>>,
    mut stopping: watch::Receiver<()>,
    env: String,
) {
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            _ = stopping.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted.and_then(|(stream, peer)| Ok((stream.into_std()?, peer))) {
            Ok(handoff) => {
                if workers[next % workers.len()].send(handoff).is_err() {
                    tracing::error!(%env, "a router worker has stopped; not accepting any more");
                    return;
                }
                next = next.wrapping_add(1);
            }
            Err(err) => {
                tracing::warn!(%env, "cannot accept a connection: {err}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one client connection, HTTP/1.1 or h2c, until it closes, or until the router stops and
/// its current requests are answered: on the router's own HTTP/1.1 path while it can, and from
/// the first request that needs more, on hyper's.
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
    let stream = match fast::serve(stream, peer, &gateway, &mut stopping).await {
        Served::Done => return,
        Served::Handoff(stream) => stream,
    };
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
