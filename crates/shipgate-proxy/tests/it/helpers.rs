use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shipgate_proxy::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A router for environment `test` on a free port.
pub async fn router() -> Router {
    Router::bind("127.0.0.1:0".parse().unwrap(), "test")
        .await
        .unwrap()
}

/// A backend on a free port that answers every request with `respond(request)`.
pub async fn backend<F, Fut, B>(respond: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let respond = respond.clone();
            let service = service_fn(move |req| {
                let response = respond(req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::spawn(connection.with_upgrades());
        }
    });
    addr
}

/// A backend that describes what it received: `{name} {method} {uri} for=.. proto=.. host=.. secret=.. body=..`.
pub async fn echo(name: &'static str) -> SocketAddr {
    backend(move |req: Request<Incoming>| async move {
        let header = |name: &str| {
            let value = req.headers().get(name);
            value.map_or("-", |v| v.to_str().unwrap()).to_owned()
        };
        let seen = format!(
            "{name} {} {} for={} proto={} host={} secret={}",
            req.method(),
            req.uri(),
            header("x-forwarded-for"),
            header("x-forwarded-proto"),
            header("x-forwarded-host"),
            header("x-secret"),
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body = format!("{seen} body={}", String::from_utf8_lossy(&body));
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::CREATED;
        response
    })
    .await
}

/// Sends `req` and returns the response as soon as its head arrives.
pub async fn send(req: Request<Full<Bytes>>) -> Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    client.request(req).await.unwrap()
}

/// Sends `req` over HTTP/2 with prior knowledge (h2c), as gRPC clients and load testers do.
pub async fn send_h2(req: Request<Full<Bytes>>) -> Response<Incoming> {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    client.request(req).await.unwrap()
}

/// POSTs `body` to `path` through `router`.
pub async fn post(router: &Router, path: &str, body: &'static str) -> Reply {
    let req = Request::post(format!("http://{}{path}", router.local_addr()))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    read(send(req).await).await
}

/// A response read to the end.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: String,
}

/// GETs `path` through `router` with the given Host header.
pub async fn get(router: &Router, host: &str, path: &str) -> Reply {
    let req = Request::get(format!("http://{}{path}", router.local_addr()))
        .header(HOST, host)
        .body(Full::default())
        .unwrap();
    read(send(req).await).await
}

/// Reads a response to the end.
pub async fn read(response: Response<Incoming>) -> Reply {
    let status = response.status();
    let content_type = response.headers().get(CONTENT_TYPE);
    let content_type = content_type.map_or("", |v| v.to_str().unwrap()).to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    Reply {
        status,
        content_type,
        body,
    }
}

/// A response body the test feeds chunk by chunk; it ends when the sender is dropped.
pub struct Chunks(pub mpsc::Receiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// One client connection, written to and read from by hand.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

/// A response as it arrived: status, headers (names in lowercase) and the body, de-chunked.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the router answered within 10 s")
            .unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response; `head_request` says it answers a HEAD (so it has no body).
    pub async fn answer(&mut self, head_request: bool) -> Answer {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(self.fill().await > 0, "the connection closed before a head");
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let mut answer = Answer {
            status: status.parse().unwrap(),
            headers,
            body: Vec::new(),
        };
        if head_request {
            return answer;
        }
        if let Some(n) = answer.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill().await > 0, "the body was cut");
            }
            answer.body = self.buf.drain(..n).collect();
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await > 0, "the chunked body was cut");
                };
                let line = String::from_utf8(self.buf[..line_end].to_vec()).unwrap();
                let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await > 0, "the chunk was cut");
                }
                answer
                    .body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await > 0 {}
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    /// Whether the router closed the connection (nothing more arrives).
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }
}

impl Raw {
    /// Sends `METHOD PATH` with Host `web` and these extra headers, and reads the answer; a
    /// connection the router closed after its last answer is opened again first.
    pub async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: web\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.write(request.as_bytes()).await;
        let answer = self.answer(method == "HEAD").await;
        if answer.header("connection") == Some("close") {
            let addr = self.stream.peer_addr().unwrap();
            *self = Raw::open(addr).await;
        }
        answer
    }
}
