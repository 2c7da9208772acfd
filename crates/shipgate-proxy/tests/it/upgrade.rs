use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use shipgate_proxy::{Router, Upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{backend, router};

/// A backend that accepts any `Upgrade` and then runs `talk` on the upgraded connection; it
/// answers 101 with the protocol asked for, an `x-backend: ready` header and `extra` headers.
async fn upgrading<F, Fut>(
    extra: fn(&Request<Incoming>) -> Vec<(&'static str, String)>,
    talk: F,
) -> SocketAddr
where
    F: Fn(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    backend(move |mut req: Request<Incoming>| {
        let talk = talk.clone();
        async move {
            let Some(protocol) = req.headers().get(UPGRADE).cloned() else {
                let mut refused = Response::new(Full::new(Bytes::from("no upgrade asked")));
                *refused.status_mut() = StatusCode::BAD_REQUEST;
                return refused;
            };
            let mut response = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(CONNECTION, "upgrade")
                .header(UPGRADE, protocol)
                .header("x-backend", "ready");
            for (name, value) in extra(&req) {
                response = response.header(name, value);
            }
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move { talk(TokioIo::new(upgrade.await.unwrap())).await });
            response.body(Full::default()).unwrap()
        }
    })
    .await
}

/// Echoes raw bytes until the client closes its side.
async fn echo_bytes(io: TokioIo<hyper::upgrade::Upgraded>) {
    let (mut reader, mut writer) = tokio::io::split(io);
    tokio::io::copy(&mut reader, &mut writer).await.unwrap();
    writer.shutdown().await.unwrap();
}

/// Reads a response head byte by byte, so nothing of the upgraded stream after it is consumed.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn an_upgraded_connection_is_spliced_and_counted_in_flight_until_it_closes() {
    let upstream = Upstream::new(upgrading(|_| Vec::new(), echo_bytes).await, "web@1");
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(upstream.clone()));

    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(header(&head, "upgrade"), Some("echo"), "{head}");
    assert_eq!(header(&head, "connection"), Some("upgrade"), "{head}");
    assert_eq!(header(&head, "x-backend"), Some("ready"), "{head}");

    for message in ["hello", ", world"] {
        client.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0; message.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    assert_eq!(upstream.in_flight(), 1);
    assert!(!Router::drain(&upstream, Duration::from_millis(20)).await);

    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert!(Router::drain(&upstream, Duration::from_secs(60)).await);

    let metrics = router.metrics();
    assert_eq!(metrics[0].requests.informational, 1);
    assert_eq!(metrics[0].request_bytes, 12);
    assert_eq!(metrics[0].response_bytes, 12);
}

#[tokio::test]
async fn a_request_the_upstream_does_not_upgrade_is_answered_as_usual() {
    let upstream = Upstream::new(upgrading(|_| Vec::new(), echo_bytes).await, "web@1");
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(upstream.clone()));

    // Without `Connection: upgrade` the Upgrade header is hop-by-hop and does not reach the backend.
    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    let mut body = vec![0; "no upgrade asked".len()];
    client.read_exact(&mut body).await.unwrap();
    assert_eq!(body, b"no upgrade asked");
    assert!(Router::drain(&upstream, Duration::from_secs(60)).await);
}

/// Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455, section 4.2.2).
fn websocket_accept(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Reads one WebSocket frame with a payload under 126 bytes: (first byte, unmasked payload).
async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    let first = io.read_u8().await.unwrap();
    let second = io.read_u8().await.unwrap();
    let len = usize::from(second & 0x7f);
    assert!(len < 126, "the test only speaks short frames");
    let mut mask = [0; 4];
    if second & 0x80 != 0 {
        io.read_exact(&mut mask).await.unwrap();
    }
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.unwrap();
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    (first, payload)
}

/// A WebSocket server side that echoes each frame back unmasked, until the client closes.
async fn echo_frames(mut io: TokioIo<hyper::upgrade::Upgraded>) {
    loop {
        let (first, payload) = read_frame(&mut io).await;
        let mut frame = vec![first, payload.len() as u8];
        frame.extend(&payload);
        io.write_all(&frame).await.unwrap();
        if first & 0x0f == 0x8 {
            return;
        }
    }
}

#[tokio::test]
async fn a_websocket_echo_works_through_the_router() {
    let accept = |req: &Request<Incoming>| {
        let key = req.headers().get("sec-websocket-key").unwrap().as_bytes();
        vec![("sec-websocket-accept", websocket_accept(key))]
    };
    let upstream = Upstream::new(upgrading(accept, echo_frames).await, "web@1");
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(upstream.clone()));

    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    let handshake = "GET /chat HTTP/1.1\r\nHost: web.localhost\r\nConnection: keep-alive, Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    client.write_all(handshake.as_bytes()).await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
    // The example of RFC 6455: the key reached the backend and its answer reached the client.
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );

    // A masked text frame "hi there", then a close frame.
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    for (opcode, payload) in [(0x81u8, &b"hi there"[..]), (0x88, &b""[..])] {
        let mut frame = vec![opcode, 0x80 | payload.len() as u8];
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        client.write_all(&frame).await.unwrap();
        assert_eq!(read_frame(&mut client).await, (opcode, payload.to_vec()));
    }
    drop(client);
    assert!(Router::drain(&upstream, Duration::from_secs(60)).await);
}
