use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use shipgate_proxy::Upstream;
use tokio::sync::mpsc;

use crate::helpers::{Chunks, backend, get, router, send};

#[tokio::test]
async fn answers_504_naming_the_upstream_and_the_timeout_when_no_head_arrives_in_time() {
    let stuck = backend(|_req| std::future::pending::<Response<Full<Bytes>>>()).await;
    let upstream = Upstream::new(stuck, "web@1.4.2");
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(upstream.clone()));
    assert_eq!(router.request_timeout(), None);
    router.set_request_timeout(Some(Duration::from_millis(50)));
    assert_eq!(router.request_timeout(), Some(Duration::from_millis(50)));

    let reply = get(&router, "localhost", "/slow").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(problem["status"], 504);
    assert_eq!(problem["title"], "upstream timed out");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("`web@1.4.2`"), "{detail}");
    assert!(detail.contains("request timeout of 50ms"), "{detail}");
    assert_eq!(upstream.in_flight(), 0);

    let metrics = router.metrics();
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].label, "web@1.4.2");
    assert_eq!(metrics[0].requests.server_error, 1);
    assert_eq!(metrics[0].requests.total(), 1);
}

#[tokio::test]
async fn the_timeout_does_not_cut_a_body_that_streams_longer() {
    let (chunks, body) = mpsc::channel(1);
    let body = Arc::new(Mutex::new(Some(body)));
    let slow = backend(move |_req| {
        let body = body.lock().unwrap().take().unwrap();
        async move { Response::new(Chunks(body)) }
    })
    .await;
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(Upstream::new(slow, "web@1")));
    let timeout = Duration::from_millis(20);
    router.set_request_timeout(Some(timeout));

    let uri = format!("http://{}/download", router.local_addr());
    let mut download = send(Request::get(uri).body(Full::<Bytes>::default()).unwrap()).await;
    assert_eq!(download.status(), StatusCode::OK);
    chunks.send(Bytes::from("first,")).await.unwrap();
    let first = download.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first,");
    // Well past the timeout, the body is still flowing.
    tokio::time::sleep(timeout * 5).await;
    chunks.send(Bytes::from("last")).await.unwrap();
    drop(chunks);
    let rest = download.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(rest, "last");
}
