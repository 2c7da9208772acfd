use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

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
use tokio::net::TcpListener;
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
