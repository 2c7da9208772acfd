use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::upstream::{TrackedBody, Upstream};

/// What the router answers with: an upstream's streamed body or a problem document.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message, so they never cross the router.
const HOP_BY_HOP: [HeaderName; 7] = [
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
    pub(crate) apps: HashMap<String, Upstream>,
    pub(crate) default_app: Option<String>,
    /// Every app of the config, live here or not.
    pub(crate) known_apps: Vec<String>,
}

/// Everything the connections of one router share: its routes and a pooled client to upstreams.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) env: String,
    pub(crate) routes: RwLock<RouteTable>,
    client: Client<HttpConnector, Incoming>,
}

impl Gateway {
    pub(crate) fn new(env: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            env,
            routes: RwLock::default(),
            client,
        }
    }

    /// Forwards `req` from `client_ip` to the live upstream of its app, or explains why it cannot.
    pub(crate) async fn forward(
        &self,
        client_ip: IpAddr,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let upstream = match self.route(req.headers().get(HOST)) {
            Ok(upstream) => upstream,
            Err(detail) => {
                return problem(StatusCode::SERVICE_UNAVAILABLE, "no live release", detail);
            }
        };
        let req = match upstream_request(req, &upstream, client_ip) {
            Ok(req) => req,
            Err(err) => {
                let detail = format!(
                    "the request target cannot be forwarded to `{}`: {err}",
                    upstream.label()
                );
                return problem(StatusCode::BAD_REQUEST, "bad request target", detail);
            }
        };
        let in_flight = upstream.start_request();
        match self.client.request(req).await {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                response.map(|body| TrackedBody::new(body, in_flight).boxed_unsync())
            }
            Err(err) => {
                let cause = error_chain(&err);
                tracing::warn!(env = %self.env, upstream = upstream.label(), "forwarding failed: {cause}");
                let detail = format!(
                    "environment `{}` got no response from `{}` at {}: {cause}",
                    self.env,
                    upstream.label(),
                    upstream.addr()
                );
                problem(StatusCode::BAD_GATEWAY, "upstream unavailable", detail)
            }
        }
    }

    /// The upstream for a request with this Host header: the app its first label names, else the
    /// default app. The error says why there is none.
    fn route(&self, host: Option<&HeaderValue>) -> Result<Upstream, String> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        // A Host naming a known app reaches that app or nothing: never another app's answer.
        let app = host
            .and_then(app_label)
            .filter(|label| routes.known_apps.contains(label) || routes.apps.contains_key(label))
            .or_else(|| routes.default_app.clone());
        let env = &self.env;
        match app {
            Some(app) => routes.apps.get(&app).cloned().ok_or_else(|| {
                format!(
                    "environment `{env}` has no live release of `{app}` yet; promote one: shipgate promote {app}@VERSION --to {env}"
                )
            }),
            None => Err(format!("no app is live in environment `{env}`")),
        }
    }
}

/// The app a Host header names: its first DNS label, without the port.
fn app_label(host: &HeaderValue) -> Option<String> {
    let authority: Authority = host.to_str().ok()?.parse().ok()?;
    authority
        .host()
        .split('.')
        .next()
        .map(str::to_ascii_lowercase)
}

/// Turns the client's request into the one sent to `upstream`: same method, path, query and body.
fn upstream_request(
    req: Request<Incoming>,
    upstream: &Upstream,
    client_ip: IpAddr,
) -> Result<Request<Incoming>, http::Error> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.addr().to_string())
        .path_and_query(path)
        .build()?;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client_ip}"),
        None => client_ip.to_string(),
    };
    headers.insert(X_FORWARDED_FOR, HeaderValue::try_from(forwarded_for)?);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    Ok(Request::from_parts(parts, body))
}

/// Removes the hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// An RFC 9457 problem document.
fn problem(status: StatusCode, title: &str, detail: String) -> Response<ProxyBody> {
    let document = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let body = Full::new(Bytes::from(document.to_string()));
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
