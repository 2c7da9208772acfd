use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_TYPE, HOST, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::canary::{Mirrors, NewPin, SideFigures, Split};
use crate::faults::{FAULTED, FaultTable, Injected};
use crate::metrics::{MetricsRegistry, NO_RELEASE, ReleaseMetrics};
use crate::tunnel::Tunnel;
use crate::upstream::{InFlight, Upstream};

/// What the router answers with: an upstream's streamed body or a problem document.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message, so they never cross the router.
pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Which upstream serves each app of one environment.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    pub(crate) apps: HashMap<String, Route>,
    pub(crate) default_app: Option<String>,
    /// Every app of the config, live here or not.
    pub(crate) known_apps: Vec<String>,
    /// Apps with no upstream yet whose release is being started (`web@1.2.0`), so a request
    /// meanwhile hears that rather than "no live release".
    pub(crate) starting: HashMap<String, String>,
    /// Apps whose new release takes a share of the requests (a canary).
    pub(crate) canaries: HashMap<String, Arc<Split>>,
}

/// The live upstream of one app and the counters of its release.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Arc<ReleaseMetrics>,
    /// The side of a canary's window this route's answers count on too, while the app has one.
    pub(crate) side: Option<Arc<SideFigures>>,
}

impl Route {
    /// Counts a response head with `status` going out now, for a request received at
    /// `received`: for its release, and on its side of a canary's window.
    pub(crate) fn record_response(&self, status: StatusCode, received: Instant) {
        let latency = self.metrics.record_response(status, received);
        if let Some(side) = &self.side {
            side.record(status, latency);
        }
    }
}

/// Why a request has nowhere to go.
pub(crate) struct Unroutable {
    /// The app the request is for, if the router could tell.
    pub(crate) app: Option<String>,
    /// The problem's title.
    pub(crate) title: &'static str,
    pub(crate) detail: String,
}

/// What the connections of one router work with: its routes, the request metrics and the
/// timeout (shared by every worker thread), and a pooled client to upstreams (one per worker, so
/// an upstream connection is driven by the thread that uses it).
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) env: String,
    pub(crate) routes: Arc<RwLock<RouteTable>>,
    pub(crate) metrics: Arc<MetricsRegistry>,
    /// The HTTP faults in force.
    pub(crate) faults: Arc<FaultTable>,
    /// Nanoseconds to wait for an upstream's response head; 0 waits as long as it takes.
    request_timeout: Arc<AtomicU64>,
    client: Client<HttpConnector, RequestBody>,
    /// The client copies of requests go to a canary with (a mirror step).
    pub(crate) mirror_client: Client<HttpConnector, Empty<Bytes>>,
    /// Mirrored requests in flight, over every worker.
    pub(crate) mirrors: Arc<Mirrors>,
    /// Upstream connections of the router's own HTTP/1.1 path that no client holds now, oldest
    /// first (see [`crate::fast`]).
    idle: Mutex<VecDeque<(SocketAddr, tokio::net::TcpStream)>>,
}

fn upstream_client<B>() -> Client<HttpConnector, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}

impl Gateway {
    pub(crate) fn new(env: String) -> Self {
        Self {
            env,
            routes: Arc::default(),
            metrics: Arc::default(),
            faults: Arc::default(),
            request_timeout: Arc::default(),
            client: upstream_client(),
            mirror_client: upstream_client(),
            mirrors: Arc::default(),
            idle: Mutex::default(),
        }
    }

    /// The same routes, metrics and timeout, with a connection pool of its own.
    pub(crate) fn for_worker(&self) -> Self {
        Self {
            env: self.env.clone(),
            routes: Arc::clone(&self.routes),
            metrics: Arc::clone(&self.metrics),
            faults: Arc::clone(&self.faults),
            request_timeout: Arc::clone(&self.request_timeout),
            client: upstream_client(),
            mirror_client: upstream_client(),
            mirrors: Arc::clone(&self.mirrors),
            idle: Mutex::default(),
        }
    }

    /// Keeps an idle upstream connection for a later client; the oldest goes past
    /// [`crate::fast::MAX_IDLE`].
    pub(crate) fn park(&self, addr: SocketAddr, stream: tokio::net::TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= crate::fast::MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back((addr, stream));
    }

    /// The newest idle connection to `addr` that its end has not closed.
    pub(crate) fn unpark(&self, addr: SocketAddr) -> Option<tokio::net::TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(at) = idle.iter().rposition(|(a, _)| *a == addr) {
            let (_, stream) = idle.remove(at)?;
            if crate::fast::is_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    pub(crate) fn set_request_timeout(&self, timeout: Option<Duration>) {
        // A zero timeout still has to mean "expire at once", not "never".
        let nanos = timeout.map_or(0, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self.request_timeout.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        match self.request_timeout.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Forwards `req` from `client_ip` to the live upstream of its app, or explains why it cannot.
    /// Every answer is counted for the release that gave it (or [`NO_RELEASE`]).
    pub(crate) async fn forward(
        &self,
        client_ip: IpAddr,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let received = Instant::now();
        let (response, cookie) = self.forward_to_side(client_ip, req, received).await;
        let mut response = response;
        if let Some(pin) = cookie
            && let Ok(value) = HeaderValue::try_from(pin.set_cookie())
        {
            response.headers_mut().append(SET_COOKIE, value);
        }
        response
    }

    /// Forwards `req` to the side of its app's canary it goes to, if the app has one; with the
    /// pin a client without one is given.
    async fn forward_to_side(
        &self,
        client_ip: IpAddr,
        req: Request<Incoming>,
        received: Instant,
    ) -> (Response<ProxyBody>, Option<NewPin>) {
        let routed = self
            .routes_for(host_of(&req))
            .map(|(stable, split)| match split {
                None => (stable, None),
                Some(split) => {
                    let idempotent = matches!(*req.method(), Method::GET | Method::HEAD);
                    let headers = req.headers();
                    let header =
                        |name: &str| headers.get_all(name).into_iter().map(HeaderValue::as_bytes);
                    let choice = split.choose(stable, idempotent, header);
                    if choice.mirror {
                        self.mirror(req.method(), req.uri(), req.headers(), &split);
                    }
                    (choice.route, choice.cookie)
                }
            });
        match routed {
            Ok((route, cookie)) => (
                self.forward_on(client_ip, req, route, received).await,
                cookie,
            ),
            Err(Unroutable { app, title, detail }) => {
                let app = app.as_deref().unwrap_or(NO_RELEASE);
                let metrics = self.metrics.release(app, NO_RELEASE);
                let response = problem(StatusCode::SERVICE_UNAVAILABLE, title, detail);
                (answered(&metrics, received, response), None)
            }
        }
    }

    /// Forwards `req` on `route`, unless a fault in force answers it or holds it first.
    async fn forward_on(
        &self,
        client_ip: IpAddr,
        req: Request<Incoming>,
        route: Route,
        received: Instant,
    ) -> Response<ProxyBody> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let headers = req.headers();
        let header = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
        let Some(injected) = self.faults.decide(&route.metrics.app, target, header) else {
            return self.exchange(client_ip, req, route, received).await;
        };
        let faulted = self.metrics.release(&route.metrics.app, FAULTED);
        if let Injected::Abort(status) = injected {
            let detail = format!("shipgate chaos: injected {status} in `{}`", self.env);
            return answered(
                &faulted,
                received,
                problem(status, "injected fault", detail),
            );
        }
        if let Injected::Delay(delay) = injected {
            tokio::time::sleep(delay).await;
        }
        let route = Route {
            metrics: faulted,
            ..route
        };
        self.exchange(client_ip, req, route, received).await
    }

    /// Sends `req` to the upstream of `route` and turns its answer into the client's.
    async fn exchange(
        &self,
        client_ip: IpAddr,
        mut req: Request<Incoming>,
        route: Route,
        received: Instant,
    ) -> Response<ProxyBody> {
        let upstream = &route.upstream;
        let protocol = upgrade_protocol(&req);
        let client_upgrade = protocol.is_some().then(|| hyper::upgrade::on(&mut req));
        let req = match upstream_request(req, upstream, client_ip, protocol, &route.metrics) {
            Ok(req) => req,
            Err(err) => {
                let detail = format!(
                    "the request target cannot be forwarded to `{}`: {err}",
                    upstream.label()
                );
                let response = problem(StatusCode::BAD_REQUEST, "bad request target", detail);
                return answered_on(&route, received, response);
            }
        };
        let in_flight = upstream.start_request();
        let mut response = match self.dispatch(req, upstream).await {
            Ok(response) => response,
            Err(problem) => return answered_on(&route, received, problem),
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client) = client_upgrade else {
                let detail = format!(
                    "`{}` switched protocols for a request that did not ask to",
                    upstream.label()
                );
                let response = problem(StatusCode::BAD_GATEWAY, "unexpected upgrade", detail);
                return answered_on(&route, received, response);
            };
            route.record_response(response.status(), received);
            return open_tunnel(client, response, in_flight, route.metrics);
        }
        strip_hop_by_hop(response.headers_mut());
        route.record_response(response.status(), received);
        response.map(|body| ResponseBody::new(body, route.metrics, in_flight).boxed_unsync())
    }

    /// Sends `req` to `upstream` and waits for the response head, within the request timeout if
    /// there is one. The error is the problem to answer instead.
    async fn dispatch(
        &self,
        req: Request<RequestBody>,
        upstream: &Upstream,
    ) -> Result<Response<Incoming>, Response<ProxyBody>> {
        let env = &self.env;
        let label = upstream.label();
        let addr = upstream.addr();
        let pending = self.client.request(req);
        let result = match self.request_timeout() {
            None => pending.await,
            Some(timeout) => match tokio::time::timeout(timeout, pending).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    tracing::warn!(%env, upstream = label, ?timeout, "upstream timed out");
                    let detail = timeout_detail(env, label, addr, timeout);
                    let title = "upstream timed out";
                    return Err(problem(StatusCode::GATEWAY_TIMEOUT, title, detail));
                }
            },
        };
        result.map_err(|err| {
            let cause = error_chain(&err);
            tracing::warn!(%env, upstream = label, "forwarding failed: {cause}");
            let detail =
                format!("environment `{env}` got no response from `{label}` at {addr}: {cause}");
            problem(StatusCode::BAD_GATEWAY, "upstream unavailable", detail)
        })
    }

    /// The route for a request for `host` (the app its first label names, else the default app)
    /// and, when that app has a canary, the canary, read under one lock. The error says why
    /// there is none.
    pub(crate) fn routes_for(
        &self,
        host: Option<&str>,
    ) -> Result<(Route, Option<Arc<Split>>), Unroutable> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        // A Host naming a known app reaches that app or nothing: never another app's answer.
        let named = host.and_then(app_label);
        let app = named
            .and_then(|label| {
                let known = routes.known_apps.iter().chain(routes.apps.keys());
                known
                    .map(String::as_str)
                    .find(|app| app.eq_ignore_ascii_case(label))
            })
            .or(routes.default_app.as_deref());
        let env = &self.env;
        match app {
            Some(app) => match routes.apps.get(app) {
                Some(route) => Ok((route.clone(), routes.canaries.get(app).cloned())),
                None if routes.starting.contains_key(app) => Err(Unroutable {
                    detail: format!(
                        "environment `{env}` is starting {}; try again in a moment",
                        routes.starting[app]
                    ),
                    app: Some(app.to_owned()),
                    title: "starting",
                }),
                None => Err(Unroutable {
                    detail: format!(
                        "environment `{env}` has no live release of `{app}` yet; promote one: shipgate promote {app}@VERSION --to {env}"
                    ),
                    app: Some(app.to_owned()),
                    title: "no live release",
                }),
            },
            None => Err(Unroutable {
                title: "no live release",
                app: None,
                detail: format!("no app is live in environment `{env}`"),
            }),
        }
    }
}

/// The host a request is for: its Host header, or the authority of its target (HTTP/2 sends
/// `:authority` instead of Host).
fn host_of(req: &Request<Incoming>) -> Option<&str> {
    match req.headers().get(HOST) {
        Some(host) => host.to_str().ok(),
        None => req.uri().authority().map(Authority::as_str),
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with `Upgrade: X`).
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(UPGRADE).cloned()).flatten()
}

/// Answers the client's upgrade with the upstream's 101 and splices the two connections once both
/// have switched; the upstream stays in flight until the tunnel closes.
fn open_tunnel(
    client: OnUpgrade,
    mut response: Response<Incoming>,
    in_flight: InFlight,
    metrics: Arc<ReleaseMetrics>,
) -> Response<ProxyBody> {
    let tunnel = Tunnel {
        client,
        upstream: hyper::upgrade::on(&mut response),
        in_flight,
        metrics,
    };
    tunnel.spawn();
    let (mut parts, _empty) = response.into_parts();
    let accepted = parts.headers.get(UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    let upgrade = HeaderValue::from_static("upgrade");
    parts.headers.insert(CONNECTION, upgrade);
    if let Some(accepted) = accepted {
        parts.headers.insert(UPGRADE, accepted);
    }
    Response::from_parts(parts, empty_body())
}

/// Counts a response the router made itself for `route` (on its side of a canary's window
/// too) and hands it on.
fn answered_on(
    route: &Route,
    received: Instant,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if let Some(side) = &route.side {
        side.record(response.status(), received.elapsed());
    }
    answered(&route.metrics, received, response)
}

/// Counts a response the router made itself and hands it on.
fn answered(
    metrics: &ReleaseMetrics,
    received: Instant,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    metrics.record_response(response.status(), received);
    let length = response.body().size_hint().exact().unwrap_or(0);
    metrics.add_response_bytes(length);
    response
}

/// The app a host names: its first DNS label, without the port (compared ignoring case).
fn app_label(host: &str) -> Option<&str> {
    // `[::1]:8101` names no app; `web.localhost:8101` names `web`.
    if host.starts_with('[') {
        return None;
    }
    let name = host.split(':').next()?;
    name.split('.').next().filter(|label| !label.is_empty())
}

/// Turns the client's request into the one sent to `upstream`: same method, path, query and body,
/// over HTTP/1.1 whatever the client spoke. `upgrade` is the protocol the client asked to switch
/// to, which then goes along with the `Connection: upgrade` that asks for it.
fn upstream_request(
    req: Request<Incoming>,
    upstream: &Upstream,
    client_ip: IpAddr,
    upgrade: Option<HeaderValue>,
    metrics: &Arc<ReleaseMetrics>,
) -> Result<Request<RequestBody>, http::Error> {
    let (mut parts, body) = req.into_parts();
    let authority = parts.uri.authority().cloned();
    // Reuses the parsed path and query; only the scheme and authority change.
    let mut target = std::mem::take(&mut parts.uri).into_parts();
    target.scheme = Some(Scheme::HTTP);
    target.authority = Some(upstream.authority().clone());
    if target.path_and_query.is_none() {
        target.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(target)?;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
    // HTTP/1.1 needs a Host; an HTTP/2 client named it in the authority of the target.
    if !headers.contains_key(HOST)
        && let Some(authority) = authority
    {
        headers.insert(HOST, HeaderValue::try_from(authority.as_str())?);
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client_ip}"),
        None => client_ip.to_string(),
    };
    headers.insert(X_FORWARDED_FOR, HeaderValue::try_from(forwarded_for)?);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let body = RequestBody::new(body, metrics.clone());
    Ok(Request::from_parts(parts, body))
}

/// Removes the hop-by-hop headers, including those the Connection header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.contains_key(CONNECTION) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

fn empty_body() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// What a request that timed out is told.
pub(crate) fn timeout_detail(
    env: &str,
    label: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> String {
    format!(
        "environment `{env}` got no response head from `{label}` at {addr} within the \
         request timeout of {timeout:?}; the upstream may be overloaded or stuck \
         (see its log), or the timeout too short (`request_timeout` of the environment)"
    )
}

/// An RFC 9457 problem document's JSON.
pub(crate) fn problem_document(status: StatusCode, title: &str, detail: &str) -> String {
    serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    })
    .to_string()
}

/// An RFC 9457 problem document.
fn problem(status: StatusCode, title: &str, detail: String) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(problem_document(status, title, &detail)));
    let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    let problem_json = HeaderValue::from_static("application/problem+json");
    response.headers_mut().insert(CONTENT_TYPE, problem_json);
    response
}

/// An error and its causes on one line; the client's own message alone is only "client error (Connect)".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
