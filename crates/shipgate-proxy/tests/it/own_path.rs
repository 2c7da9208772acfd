//! The router's own HTTP/1.1 path: many requests on one client connection, every way a body
//! can be framed, hop-by-hop headers, upstreams that close idle connections, and the hand-over
//! to hyper for what that path does not take. The client here is raw TCP, so that what goes
//! over one connection is exactly what the test wrote.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use shipgate_proxy::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::helpers::{Chunks, Raw, backend, echo, router};

/// A router for app `web`, routed to `backend` as web@1, and a raw client connection to it.
async fn web_on(backend: SocketAddr) -> (shipgate_proxy::Router, Raw) {
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(Upstream::new(backend, "web@1")));
    let client = Raw::open(router.local_addr()).await;
    (router, client)
}

/// A backend answering `/fixed` with a Content-Length body, `/chunked` with a chunked one, and
/// any other path with `E METHOD URI for=X-FORWARDED-FOR body=BODY` (status 201).
async fn framings() -> SocketAddr {
    backend(
        move |req: http::Request<hyper::body::Incoming>| async move {
            match req.uri().path() {
                "/fixed" => Response::new(Full::new(Bytes::from("fixed")).boxed()),
                "/chunked" => {
                    let (tx, rx) = mpsc::channel(3);
                    for piece in ["one,", "two,", "three"] {
                        tx.send(Bytes::from(piece)).await.unwrap();
                    }
                    drop(tx);
                    Response::new(Chunks(rx).map_err(|never| match never {}).boxed())
                }
                _ => {
                    let forwarded_for = req.headers().get("x-forwarded-for").cloned();
                    let seen = format!(
                        "E {} {} for={}",
                        req.method(),
                        req.uri(),
                        forwarded_for.as_ref().map_or("-", |v| v.to_str().unwrap())
                    );
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let body = format!("{seen} body={}", String::from_utf8_lossy(&body));
                    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
                    *response.status_mut() = StatusCode::CREATED;
                    response
                }
            }
        },
    )
    .await
}

#[tokio::test]
async fn one_connection_carries_pipelined_requests_of_every_framing() {
    let (router, mut client) = web_on(framings().await).await;
    let big = "x".repeat(300_000);
    // Five requests in one write: the router must answer them in order, each framed right.
    let requests = format!(
        "GET /fixed HTTP/1.1\r\nHost: web\r\n\r\n\
         GET /chunked HTTP/1.1\r\nHost: web\r\n\r\n\
         HEAD /fixed HTTP/1.1\r\nHost: web\r\n\r\n\
         POST /echo?q=1 HTTP/1.1\r\nHost: web\r\nContent-Length: {}\r\n\r\n{big}\
         GET /fixed HTTP/1.1\r\nHost: web\r\n\r\n",
        big.len()
    );
    client.write(requests.as_bytes()).await;

    let fixed = client.answer(false).await;
    assert_eq!((fixed.status, fixed.text().as_str()), (200, "fixed"));
    let chunked = client.answer(false).await;
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.text(), "one,two,three");
    let head = client.answer(true).await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("5"))
    );
    let echoed = client.answer(false).await;
    assert_eq!(echoed.status, 201);
    let text = echoed.text();
    assert!(
        text.starts_with("E POST /echo?q=1 for=127.0.0.1 body=x"),
        "{}",
        &text[..60]
    );
    assert!(
        text.ends_with(&format!("body={big}")),
        "the body arrived whole"
    );
    let last = client.answer(false).await;
    assert_eq!(last.text(), "fixed");

    let metrics = &router.metrics()[0];
    assert_eq!(metrics.requests.total(), 5);
    assert_eq!(metrics.request_bytes, big.len() as u64);
    let response_bytes = 5 + 13 + echoed.body.len() as u64 + 5;
    assert_eq!(metrics.response_bytes, response_bytes);
}

/// A backend on raw TCP: for each connection, reads one request head and writes `answer`, then
/// closes the connection if `close_after` says so.
async fn raw_backend(answer: &'static [u8], close_after: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                    seen.drain(..end + 4);
                    if stream.write_all(answer).await.is_err() || close_after {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn hop_by_hop_headers_go_no_further_either_way() {
    let (router, mut client) = web_on(echo("E").await).await;
    client
        .write(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, x-secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n")
        .await;
    let text = client.answer(false).await.text();
    assert!(text.contains("secret=-"), "{text}");
    assert!(text.contains("for=192.0.2.1, 127.0.0.1"), "{text}");
    assert!(
        text.contains("host=web proto=http") || text.contains("proto=http host=web"),
        "{text}"
    );

    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nok";
    router.switch(
        "web",
        Some(Upstream::new(raw_backend(answer, false).await, "web@2")),
    );
    client.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    let reply = client.answer(false).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    assert_eq!(reply.header("x-kept"), Some("yes"));
    for name in ["x-private", "keep-alive", "connection"] {
        assert_eq!(reply.header(name), None, "{name} reached the client");
    }
}

#[tokio::test]
async fn a_body_without_a_length_is_passed_on_until_the_upstream_closes() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, then the end";
    let (_router, mut client) = web_on(raw_backend(answer, true).await).await;
    client.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    let reply = client.answer(false).await;
    assert_eq!(reply.text(), "all of it, then the end");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(client.closed().await);
}

#[tokio::test]
async fn an_upstream_that_closes_its_idle_connections_fails_no_request() {
    // Closes each connection right after its answer, without saying so (as an upstream whose
    // keep-alive timeout ran out would): the router must notice, or send again, not answer 502.
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsure";
    let (router, mut client) = web_on(raw_backend(answer, true).await).await;
    for i in 0..20 {
        client.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
        let reply = client.answer(false).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "sure"),
            "request {i}"
        );
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A new client takes over an idle connection the upstream has closed meanwhile.
    for _ in 0..3 {
        let mut other = Raw::open(router.local_addr()).await;
        other.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
        assert_eq!(other.answer(false).await.status, 200);
    }
    assert_eq!(router.metrics()[0].requests.server_error, 0);
}

#[tokio::test]
async fn requests_on_one_connection_follow_a_switch() {
    let router = router().await;
    router.set_apps(&["web"]);
    let a = Upstream::new(echo("A").await, "web@1");
    router.switch("web", Some(a.clone()));
    let mut client = Raw::open(router.local_addr()).await;
    client.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert!(client.answer(false).await.text().starts_with("A "));
    router.switch("web", Some(Upstream::new(echo("B").await, "web@2")));
    client.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert!(client.answer(false).await.text().starts_with("B "));
    assert_eq!(a.in_flight(), 0);
}

#[tokio::test]
async fn what_the_own_path_does_not_take_goes_to_hyper_on_the_same_connection() {
    let (router, mut client) = web_on(echo("E").await).await;
    client
        .write(b"GET /first HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    assert!(
        client
            .answer(false)
            .await
            .text()
            .starts_with("E GET /first")
    );
    // A chunked request body: the general path takes the connection from here on.
    client
        .write(b"POST /second HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .await;
    let reply = client.answer(false).await;
    assert_eq!(reply.status, 201);
    assert!(reply.text().ends_with("body=abcde"), "{}", reply.text());
    client
        .write(b"GET /third HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    assert!(
        client
            .answer(false)
            .await
            .text()
            .starts_with("E GET /third")
    );
    // Nothing live for another app's Host: 503, then the connection closes.
    let mut other = Raw::open(router.local_addr()).await;
    router.set_apps(&["web", "api"]);
    other
        .write(b"GET / HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
        .await;
    let refused = other.answer(false).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE.as_u16());
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        refused.text().contains("no live release of `api`"),
        "{}",
        refused.text()
    );
}
