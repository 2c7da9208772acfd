//! The router's own HTTP/1.1 path, for the requests nearly every client sends: HTTP/1.1, a
//! path target, a Host, no body or a Content-Length one, no upgrade, no `Expect`. It forwards
//! them the way nginx does, with far less work per request than a general HTTP library: the
//! head is parsed once (httparse), the upstream's head is copied with the hop-by-hop headers
//! left out, and the bodies are copied as they are, chunked ones included. Each client
//! connection keeps its upstream connection for as long as the route does not change (and, while
//! a canary splits its app's requests, one to the other side too), and a worker keeps idle
//! upstream connections for the next client.
//!
//! Anything else (h2c, an upgrade, a chunked request body, `Expect: 100-continue`, HTTP/1.0, an
//! absolute target) is handed, with the bytes already read, to hyper's server and the general
//! path in [`crate::forwarding`], which handles it as before. The decision is made at a request
//! boundary, so one connection is never served by both at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::canary::NewPin;
use crate::faults::{FAULTED, Injected};
use crate::forwarding::{Gateway, Route, Unroutable, problem_document};
use crate::metrics::{NO_RELEASE, ReleaseMetrics};
use crate::upstream::InFlight;

/// The largest request or response head read; a larger one gets 431 (request) or 502 (response).
const MAX_HEAD: usize = 64 * 1024;
/// Headers one head may have.
const MAX_HEADERS: usize = 100;
/// How much is read from a socket at once.
const READ_SIZE: usize = 16 * 1024;
/// Idle upstream connections one worker keeps for later clients.
pub(crate) const MAX_IDLE: usize = 64;
/// The HTTP/2 connection preface, which an h2c client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What became of a client connection.
pub(crate) enum Served {
    /// It closed, or the router stopped between two requests.
    Done,
    /// A request needs the general path: the connection, with the bytes read from it but not
    /// yet served, goes to hyper.
    Handoff(Prefixed),
}

/// An upstream connection with the bytes read from it but not yet used.
pub(crate) struct UpstreamConn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: BytesMut,
    /// Taken from an earlier request, so it may have been closed by the upstream meanwhile.
    reused: bool,
}

/// Serves the requests of one client connection until it closes, the router stops, or a request
/// needs the general path.
pub(crate) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    gateway: &Gateway,
    stopping: &mut watch::Receiver<()>,
) -> Served {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut upstream: Option<UpstreamConn> = None;
    // The connection to the other upstream of a canary's split, kept beside the current one
    // while the client's requests go to this one.
    let mut spare: Option<UpstreamConn> = None;
    let forwarded_for = peer.ip().to_string();
    loop {
        // The next request's head, whole, with its length.
        let (head_len, received, plan) = loop {
            let h2 =
                !buf.is_empty() && (buf.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(&buf));
            if h2 && buf.len() >= H2_PREFACE.len() {
                return handoff(client, buf, [upstream, spare], gateway);
            }
            if !h2 {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let received = Instant::now();
                        break (n, received, plan_request(&req, &forwarded_for, gateway));
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                    // Too large or malformed: hyper answers it as it answers any bad request.
                    _ => return handoff(client, buf, [upstream, spare], gateway),
                }
            }
            let read = tokio::select! {
                read = client.read_buf(&mut buf) => read,
                () = idle_closed(upstream.as_ref()), if upstream.is_some() => {
                    upstream = None;
                    continue;
                }
                _ = stopping.changed() => return Served::Done,
            };
            if !matches!(read, Ok(n) if n > 0) {
                park(gateway, [upstream, spare]);
                return Served::Done;
            }
        };
        let plan = match plan {
            Plan::General => return handoff(client, buf, [upstream, spare], gateway),
            Plan::Forward(plan) => plan,
            Plan::Refuse(metrics, status, Unroutable { title, detail, .. }) => {
                let refused = refuse(&mut client, &metrics, received, status, title, &detail, b"");
                let _ = refused.await;
                park(gateway, [upstream, spare]);
                return Served::Done;
            }
        };
        buf.advance(head_len);
        let upstreams = (&mut upstream, &mut spare);
        let exchanged = exchange(&mut client, &mut buf, upstreams, gateway, plan, received);
        match exchanged.await {
            Ok(Next::KeepAlive) if !stopping.has_changed().unwrap_or(true) => {}
            _ => {
                park(gateway, [upstream, spare]);
                return Served::Done;
            }
        }
    }
}

/// Resolves when an idle upstream connection is closed by its end (or sends what it should not).
async fn idle_closed(upstream: Option<&UpstreamConn>) {
    let Some(up) = upstream else {
        return std::future::pending().await;
    };
    loop {
        if up.stream.readable().await.is_err() || !is_open(&up.stream) {
            return;
        }
    }
}

/// Whether an idle upstream connection is still open: nothing to read, and no end of stream.
pub(crate) fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn handoff(
    client: TcpStream,
    buf: BytesMut,
    upstreams: [Option<UpstreamConn>; 2],
    gateway: &Gateway,
) -> Served {
    park(gateway, upstreams);
    Served::Handoff(Prefixed {
        prefix: buf,
        inner: client,
    })
}

/// Keeps reusable upstream connections for the worker's next clients.
fn park<const N: usize>(gateway: &Gateway, upstreams: [Option<UpstreamConn>; N]) {
    for up in upstreams.into_iter().flatten() {
        if up.buf.is_empty() {
            gateway.park(up.addr, up.stream);
        }
    }
}

/// What to do with one request.
enum Plan {
    /// Forward it, as planned.
    Forward(Forward),
    /// Answer why it has nowhere to go (or the status a fault injects), and close.
    Refuse(Arc<ReleaseMetrics>, StatusCode, Unroutable),
    /// It needs the general path.
    General,
}

/// A request to forward.
struct Forward {
    route: Route,
    /// The head for the upstream.
    head: Vec<u8>,
    /// Request body bytes to copy after it.
    body: u64,
    /// The request is `HEAD`, so the response has no body whatever it says.
    head_method: bool,
    /// The client asked to close the connection after this exchange.
    close: bool,
    /// How long a fault holds it before it is forwarded.
    delay: Option<std::time::Duration>,
    /// The pin of a canary's cookie, for a client that has none yet.
    cookie: Option<NewPin>,
}

/// Reads the request head and decides what to do with it; writes the upstream's head.
fn plan_request(req: &httparse::Request<'_, '_>, forwarded_for: &str, gateway: &Gateway) -> Plan {
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Plan::General;
    };
    if !path.starts_with('/') {
        return Plan::General;
    }
    let mut host = None;
    let mut body = None;
    let mut close = false;
    let mut earlier_for = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Plan::General;
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if body.is_some() {
                return Plan::General;
            }
            match parse_length(h.value) {
                Some(n) => body = Some(n),
                None => return Plan::General,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Plan::General;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Plan::General;
                }
            }
        } else if name.eq_ignore_ascii_case("x-forwarded-for") && earlier_for.is_none() {
            earlier_for = Some(h.value);
        }
    }
    let Some(host) = host else {
        return Plan::General;
    };
    let Ok(host_str) = std::str::from_utf8(host) else {
        return Plan::General;
    };
    let (route, cookie) = match gateway.routes_for(Some(host_str)) {
        Ok((route, None)) => (route, None),
        // A mirror's copies are sent from the general path.
        Ok((_, Some(split))) if split.mirror => return Plan::General,
        Ok((stable, Some(split))) => {
            let named = |name| {
                let headers = req.headers.iter();
                let named = move |h: &&httparse::Header<'_>| h.name.eq_ignore_ascii_case(name);
                headers.filter(named).map(|h| h.value)
            };
            let choice = split.choose(stable, false, named);
            (choice.route, choice.cookie)
        }
        Err(unroutable) => {
            let app = unroutable.app.as_deref().unwrap_or(NO_RELEASE);
            let metrics = gateway.metrics.release(app, NO_RELEASE);
            return Plan::Refuse(metrics, StatusCode::SERVICE_UNAVAILABLE, unroutable);
        }
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let (route, delay) = match gateway.faults.decide(&route.metrics.app, path, header) {
        None => (route, None),
        Some(injected) => {
            let app = route.metrics.app.clone();
            let metrics = gateway.metrics.release(&app, FAULTED);
            match injected {
                Injected::Abort(status) => {
                    let detail = format!("shipgate chaos: injected {status} in `{}`", gateway.env);
                    let title = "injected fault";
                    let why = Unroutable {
                        app: Some(app),
                        title,
                        detail,
                    };
                    return Plan::Refuse(metrics, status, why);
                }
                Injected::Delay(delay) => (Route { metrics, ..route }, Some(delay)),
            }
        }
    };
    let mut head = Vec::with_capacity(256 + req.headers.len() * 32);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_names(req.headers);
    for h in req.headers.iter() {
        if is_hop_by_hop(h.name, &named)
            || h.name.eq_ignore_ascii_case("x-forwarded-for")
            || h.name.eq_ignore_ascii_case("x-forwarded-proto")
            || h.name.eq_ignore_ascii_case("x-forwarded-host")
        {
            continue;
        }
        push_header(&mut head, h.name.as_bytes(), h.value);
    }
    head.extend_from_slice(b"x-forwarded-for: ");
    if let Some(earlier) = earlier_for.filter(|v| std::str::from_utf8(v).is_ok()) {
        head.extend_from_slice(earlier);
        head.extend_from_slice(b", ");
    }
    head.extend_from_slice(forwarded_for.as_bytes());
    head.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    push_header(&mut head, b"x-forwarded-host", host);
    head.extend_from_slice(b"\r\n");
    Plan::Forward(Forward {
        route,
        head,
        body: body.unwrap_or(0),
        head_method: method == "HEAD",
        close,
        delay,
        cookie,
    })
}

/// Whether the connection to the client stays open after an exchange.
enum Next {
    KeepAlive,
    Close,
}

/// Forwards one planned request and its response.
async fn exchange(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    (upstream, spare): (&mut Option<UpstreamConn>, &mut Option<UpstreamConn>),
    gateway: &Gateway,
    plan: Forward,
    received: Instant,
) -> io::Result<Next> {
    let route = plan.route;
    let (target, metrics) = (&route.upstream, &route.metrics);
    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    let in_flight = target.start_request();
    let (env, label, addr) = (&gateway.env, target.label(), target.addr());
    let to_head = async {
        let request = Outgoing {
            head: plan.head,
            body: plan.body,
        };
        let upstreams = (&mut *upstream, &mut *spare);
        let resend = send_request(upstreams, gateway, addr, request, buf, client).await?;
        metrics.add_request_bytes(plan.body);
        let up = upstream.as_mut().ok_or(Failed::Client)?;
        read_response_head(up, resend, client).await
    };
    let answer = match gateway.request_timeout() {
        None => to_head.await,
        Some(timeout) => tokio::time::timeout(timeout, to_head)
            .await
            .unwrap_or_else(|_elapsed| {
                tracing::warn!(%env, upstream = label, ?timeout, "upstream timed out");
                let detail = crate::forwarding::timeout_detail(env, label, addr, timeout);
                Err(Failed::Problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream timed out",
                    detail,
                ))
            }),
    };
    let response = match answer {
        Ok(response) => response,
        Err(failed) => {
            // Nothing is in flight on the upstream any more once the client is answered.
            drop(in_flight);
            *upstream = None;
            let (status, title, detail) = match failed {
                Failed::Client => return Ok(Next::Close),
                Failed::Problem(status, title, detail) => (status, title, detail),
                Failed::Upstream(cause) => {
                    tracing::warn!(%env, upstream = label, "forwarding failed: {cause}");
                    let detail = format!(
                        "environment `{env}` got no response from `{label}` at {addr}: {cause}"
                    );
                    (StatusCode::BAD_GATEWAY, "upstream unavailable", detail)
                }
            };
            if let Some(side) = &route.side {
                side.record(status, received.elapsed());
            }
            let mut set_cookie = Vec::new();
            if let Some(pin) = plan.cookie {
                pin.push_header(&mut set_cookie);
            }
            let refused = refuse(
                client,
                metrics,
                received,
                status,
                title,
                &detail,
                &set_cookie,
            );
            refused.await?;
            return Ok(Next::Close);
        }
    };
    let Some(up) = upstream.as_mut() else {
        return Ok(Next::Close);
    };
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let framing = if plan.head_method || matches!(response.status, 204 | 304) {
        Framing::Empty
    } else {
        response.framing
    };
    let keep_client = !plan.close && framing != Framing::UntilClose;
    let mut out = response.head;
    if !keep_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(pin) = plan.cookie {
        pin.push_header(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    route.record_response(status, received);
    let copied = copy_body(up, client, framing, out, metrics, in_flight).await;
    match copied {
        Ok(()) => {}
        Err(()) => {
            *upstream = None;
            return Ok(Next::Close);
        }
    }
    if !response.reusable || framing == Framing::UntilClose {
        *upstream = None;
    } else {
        // Kept for the next request, which may find it closed by the upstream meanwhile.
        up.reused = true;
    }
    Ok(if keep_client {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Answers a problem the router found itself, with the `extra` header lines; the connection is
/// then closed, since the request body, if any, was not read.
async fn refuse(
    client: &mut TcpStream,
    metrics: &ReleaseMetrics,
    received: Instant,
    status: StatusCode,
    title: &str,
    detail: &str,
    extra: &[u8],
) -> io::Result<()> {
    let (response, body) = problem_response(status, title, detail, extra);
    metrics.record_response(status, received);
    metrics.add_response_bytes(body);
    client.write_all(&response).await
}

/// A problem document as a whole HTTP/1.1 response that closes the connection, with the `extra`
/// header lines, and the length of its body.
fn problem_response(status: StatusCode, title: &str, detail: &str, extra: &[u8]) -> (Vec<u8>, u64) {
    let body = problem_document(status, title, detail);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let len = body.len() as u64;
    let response = [head.as_bytes(), extra, b"\r\n", body.as_bytes()].concat();
    (response, len)
}

/// The request as it goes to the upstream.
struct Outgoing {
    head: Vec<u8>,
    /// Body bytes that follow the head, from the client.
    body: u64,
}

/// Sends the head and body of a request to `addr`, on the connection kept from the last request
/// (or the spare) if it goes there too, else on an idle or a new one. Returns the bytes sent if
/// they may be sent again on a new connection (the connection was reused and the whole request
/// was sent at once), should the reused one turn out to be closed.
async fn send_request(
    (upstream, spare): (&mut Option<UpstreamConn>, &mut Option<UpstreamConn>),
    gateway: &Gateway,
    addr: SocketAddr,
    request: Outgoing,
    buf: &mut BytesMut,
    client: &mut TcpStream,
) -> Result<Option<Vec<u8>>, Failed> {
    if upstream.as_ref().is_some_and(|up| up.addr != addr) {
        // Another upstream this time (the other side of a canary's split, or a switch): the
        // connection kept waits as the spare, for a later request to its own upstream, and is
        // never used for this one; the spare takes over if it goes where this one does.
        let kept = upstream.take().filter(|up| up.buf.is_empty());
        let other = std::mem::replace(spare, kept);
        match other {
            Some(up) if up.addr == addr && is_open(&up.stream) => *upstream = Some(up),
            other => park(gateway, [other]),
        }
    }
    if upstream.is_none() {
        *upstream = Some(match gateway.unpark(addr) {
            Some(stream) => UpstreamConn::new(addr, stream, true),
            None => UpstreamConn::connect(addr).await?,
        });
    }
    let Some(up) = upstream.as_mut() else {
        return Err(Failed::Client);
    };
    let mut out = request.head;
    let buffered = usize::try_from(request.body).map_or(buf.len(), |n| n.min(buf.len()));
    out.extend_from_slice(&buf[..buffered]);
    buf.advance(buffered);
    let mut remaining = request.body - buffered as u64;
    if let Err(err) = up.stream.write_all(&out).await {
        if !(up.reused && remaining == 0) {
            return Err(Failed::Upstream(err.to_string()));
        }
        *up = UpstreamConn::connect(addr).await?;
        up.stream
            .write_all(&out)
            .await
            .map_err(|e| Failed::Upstream(e.to_string()))?;
        return Ok(None);
    }
    let resend = (up.reused && remaining == 0).then_some(out);
    if remaining == 0 {
        return Ok(resend);
    }
    let mut chunk = vec![0u8; READ_SIZE];
    while remaining > 0 {
        let want = usize::try_from(remaining).map_or(READ_SIZE, |n| n.min(READ_SIZE));
        let n = match client.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return Err(Failed::Client),
            Ok(n) => n,
        };
        up.stream
            .write_all(&chunk[..n])
            .await
            .map_err(|e| Failed::Upstream(e.to_string()))?;
        remaining -= n as u64;
    }
    Ok(resend)
}

impl UpstreamConn {
    fn new(addr: SocketAddr, stream: TcpStream, reused: bool) -> Self {
        Self {
            addr,
            stream,
            buf: BytesMut::with_capacity(READ_SIZE),
            reused,
        }
    }

    async fn connect(addr: SocketAddr) -> Result<Self, Failed> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Failed::Upstream(format!("client error (Connect): {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(Self::new(addr, stream, false))
    }
}

/// Why an exchange ended before the response head reached the client.
enum Failed {
    /// The client went away; nothing to answer.
    Client,
    /// The upstream could not be reached or failed; the cause, for the problem document.
    Upstream(String),
    /// Answer this problem.
    Problem(StatusCode, &'static str, String),
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head, ready for the client but for its last line.
struct ResponseHead {
    status: u16,
    head: Vec<u8>,
    framing: Framing,
    /// The upstream connection can carry another request after this response.
    reusable: bool,
}

/// Reads the upstream's response head; interim (1xx) responses are passed on to the client.
async fn read_response_head(
    up: &mut UpstreamConn,
    mut resend: Option<Vec<u8>>,
    client: &mut TcpStream,
) -> Result<ResponseHead, Failed> {
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&up.buf) {
                Ok(httparse::Status::Complete(n)) => Some((n, response_head(&res)?)),
                Ok(httparse::Status::Partial) if up.buf.len() < MAX_HEAD => None,
                Ok(httparse::Status::Partial) => {
                    return Err(Failed::Upstream("the response head is too large".into()));
                }
                Err(err) => return Err(Failed::Upstream(format!("invalid response: {err}"))),
            }
        };
        if let Some((n, head)) = parsed {
            up.buf.advance(n);
            if head.status == 101 {
                let detail = "the upstream switched protocols for a request that did not ask to";
                return Err(Failed::Problem(
                    StatusCode::BAD_GATEWAY,
                    "unexpected upgrade",
                    detail.into(),
                ));
            }
            if (100..200).contains(&head.status) {
                let mut interim = head.head;
                interim.extend_from_slice(b"\r\n");
                client
                    .write_all(&interim)
                    .await
                    .map_err(|_| Failed::Client)?;
                continue;
            }
            return Ok(head);
        }
        match up.stream.read_buf(&mut up.buf).await {
            Ok(n) if n > 0 => continue,
            result => {
                // A kept connection the upstream had closed: send the request again on a new one.
                if up.buf.is_empty()
                    && let Some(out) = resend.take()
                {
                    *up = UpstreamConn::connect(up.addr).await?;
                    up.stream
                        .write_all(&out)
                        .await
                        .map_err(|e| Failed::Upstream(e.to_string()))?;
                    continue;
                }
                let cause = match result {
                    Err(err) => err.to_string(),
                    Ok(_) => "the connection closed before a response head".into(),
                };
                return Err(Failed::Upstream(cause));
            }
        }
    }
}

/// The client's copy of a response head, and how its body is framed.
fn response_head(res: &httparse::Response<'_, '_>) -> Result<ResponseHead, Failed> {
    let invalid = |what: &str| Failed::Upstream(format!("invalid response: {what}"));
    let status = res.code.ok_or_else(|| invalid("no status"))?;
    let mut length = None;
    let mut chunked = None;
    let mut reusable = res.version == Some(1);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or_else(|| invalid("a bad Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(invalid("two Content-Lengths"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = tokens(h.value).last();
            chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if h.name.eq_ignore_ascii_case("connection")
            && tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"))
        {
            reusable = false;
        }
    }
    let framing = match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) | (None, None) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
    };
    let mut head = Vec::with_capacity(256 + res.headers.len() * 32);
    head.extend_from_slice(format!("HTTP/1.1 {status} ").as_bytes());
    head.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let named = connection_names(res.headers);
    for h in res.headers.iter() {
        // The body is passed on as it comes, so its framing headers go with it.
        let framing_header = h.name.eq_ignore_ascii_case("transfer-encoding");
        let replaced_length = chunked.is_some() && h.name.eq_ignore_ascii_case("content-length");
        if replaced_length || (!framing_header && is_hop_by_hop(h.name, &named)) {
            continue;
        }
        push_header(&mut head, h.name.as_bytes(), h.value);
    }
    Ok(ResponseHead {
        status,
        head,
        framing,
        reusable,
    })
}

/// Sends `out` (the head) and the body to the client; returns the body's bytes (for a chunked
/// body, its data without the framing). An error means the body was cut, and both connections
/// are closed.
async fn copy_body(
    up: &mut UpstreamConn,
    client: &mut TcpStream,
    framing: Framing,
    mut out: Vec<u8>,
    metrics: &ReleaseMetrics,
    in_flight: InFlight,
) -> Result<(), ()> {
    let mut in_flight = Some(in_flight);
    let mut body = 0u64;
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunks = Chunks::default();
    loop {
        let done = match framing {
            Framing::Empty => true,
            Framing::Length(_) => {
                let take = usize::try_from(remaining).map_or(up.buf.len(), |n| n.min(up.buf.len()));
                out.extend_from_slice(&up.buf[..take]);
                up.buf.advance(take);
                remaining -= take as u64;
                body += take as u64;
                remaining == 0
            }
            Framing::Chunked => {
                let (used, data) = chunks.scan(&up.buf).map_err(|_| ())?;
                out.extend_from_slice(&up.buf[..used]);
                up.buf.advance(used);
                body += data;
                chunks.done()
            }
            Framing::UntilClose => {
                body += up.buf.len() as u64;
                out.extend_from_slice(&up.buf);
                up.buf.clear();
                false
            }
        };
        // Counted, and the upstream's part ended, before the client can see the bytes.
        metrics.add_response_bytes(std::mem::take(&mut body));
        if done {
            in_flight = None;
        }
        if !out.is_empty() {
            client.write_all(&out).await.map_err(|_| ())?;
            out.clear();
        }
        if done {
            return Ok(());
        }
        match up.stream.read_buf(&mut up.buf).await {
            Ok(0) if framing == Framing::UntilClose => {
                drop(in_flight);
                return Ok(());
            }
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
    }
}

/// Where a chunked body is, as its bytes go by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Chunks {
    /// In a chunk-size line (with its extensions).
    #[default]
    SizeStart,
    Size {
        size: u64,
        ext: bool,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// In a trailer line of this many bytes so far; an empty one ends the body.
    Trailer(usize),
    TrailerLf(usize),
    Done,
}

impl Chunks {
    fn done(&self) -> bool {
        *self == Chunks::Done
    }

    /// Goes over `bytes`; returns how many belong to the body (all, unless it ended) and how
    /// many of those are chunk data. An error means the framing is broken.
    fn scan(&mut self, bytes: &[u8]) -> Result<(usize, u64), ()> {
        let mut i = 0;
        let mut data = 0u64;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunks::Done => break,
                Chunks::Data(n) => {
                    let take =
                        usize::try_from(n).map_or(bytes.len() - i, |n| n.min(bytes.len() - i));
                    i += take;
                    data += take as u64;
                    let left = n - take as u64;
                    if left == 0 {
                        Chunks::DataCr
                    } else {
                        Chunks::Data(left)
                    }
                }
                Chunks::SizeStart => {
                    i += 1;
                    let digit = (b as char).to_digit(16).ok_or(())?;
                    Chunks::Size {
                        size: u64::from(digit),
                        ext: false,
                    }
                }
                Chunks::Size { size, ext } => {
                    i += 1;
                    match (b, (b as char).to_digit(16)) {
                        (b'\r', _) => Chunks::SizeLf { size },
                        (_, Some(d)) if !ext => Chunks::Size {
                            size: size.checked_mul(16).ok_or(())? + u64::from(d),
                            ext,
                        },
                        (b';' | b' ' | b'\t', _) => Chunks::Size { size, ext: true },
                        (b'\n', _) => return Err(()),
                        _ if ext => Chunks::Size { size, ext },
                        _ => return Err(()),
                    }
                }
                Chunks::SizeLf { size } => {
                    i += 1;
                    match (b, size) {
                        (b'\n', 0) => Chunks::Trailer(0),
                        (b'\n', n) => Chunks::Data(n),
                        _ => return Err(()),
                    }
                }
                Chunks::DataCr if b == b'\r' => {
                    i += 1;
                    Chunks::DataLf
                }
                Chunks::DataLf if b == b'\n' => {
                    i += 1;
                    Chunks::SizeStart
                }
                Chunks::DataCr | Chunks::DataLf => return Err(()),
                Chunks::Trailer(len) => {
                    i += 1;
                    match b {
                        b'\r' => Chunks::TrailerLf(len),
                        _ if len < MAX_HEAD => Chunks::Trailer(len + 1),
                        _ => return Err(()),
                    }
                }
                Chunks::TrailerLf(len) => {
                    i += 1;
                    match (b, len) {
                        (b'\n', 0) => Chunks::Done,
                        (b'\n', _) => Chunks::Trailer(0),
                        _ => return Err(()),
                    }
                }
            };
        }
        Ok((i, data))
    }
}

/// A Content-Length value: digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The header names the Connection headers list (besides `close` and `keep-alive`).
fn connection_names<'h>(headers: &'h [httparse::Header<'_>]) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect()
}

/// Whether a header describes the connection rather than the message (as
/// [`crate::forwarding`]'s list says, plus those the Connection header names).
fn is_hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    crate::forwarding::HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
        || named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

fn push_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// A client connection with bytes already read from it, which are read again first.
pub(crate) struct Prefixed {
    prefix: BytesMut,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], step: usize) -> Result<(usize, u64, bool), ()> {
        let mut chunks = Chunks::default();
        let (mut used, mut data) = (0, 0);
        for piece in body.chunks(step) {
            let (u, d) = chunks.scan(piece)?;
            used += u;
            data += d;
            if chunks.done() {
                break;
            }
        }
        Ok((used, data, chunks.done()))
    }

    #[test]
    fn a_chunked_body_is_followed_to_its_end_in_pieces_of_any_size() {
        let body = b"5;name=x\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(
                scan_all(body, step),
                Ok((body.len() - 4, 31, true)),
                "step {step}"
            );
        }
        assert_eq!(scan_all(b"3\r\nabc\r\n", 2), Ok((8, 3, false)));
    }

    #[test]
    fn broken_chunk_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"3\r\nabcX",
            b"3\n",
            b"FFFFFFFFFFFFFFFFF\r\n",
            b"0\r\nab\rX",
        ] {
            assert_eq!(scan_all(bad, 1).map(|_| ()), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"42"), Some(42));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 2",
            b"0x10",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None);
        }
    }
}
