use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use shipgate_proxy::{Router, Upstream};
use tokio::sync::mpsc;

use crate::helpers::{Chunks, backend, echo, get, router, send};

#[tokio::test]
async fn requests_after_a_switch_reach_the_new_upstream() {
    let router = router().await;
    let a = Upstream::new(echo("A").await, "web@1");
    let b = Upstream::new(echo("B").await, "web@2");
    router.set_apps(&["web", "api"]);

    assert!(router.switch("web", Some(a)).is_none());
    assert!(get(&router, "localhost", "/").await.body.starts_with("A "));

    let previous = router.switch("web", Some(b));
    assert_eq!(previous.unwrap().label(), "web@1");
    assert_eq!(router.current("web").unwrap().label(), "web@2");
    for _ in 0..3 {
        assert!(get(&router, "localhost", "/").await.body.starts_with("B "));
    }

    assert_eq!(router.switch("web", None).unwrap().label(), "web@2");
    assert!(router.current("web").is_none());
}

#[tokio::test]
async fn a_response_streaming_from_the_old_upstream_completes_and_then_it_drains() {
    let (chunks, body) = mpsc::channel(1);
    let body = Arc::new(Mutex::new(Some(body)));
    let slow = backend(move |_req| {
        let body = body.lock().unwrap().take().unwrap();
        async move { http::Response::new(Chunks(body)) }
    })
    .await;
    let a = Upstream::new(slow, "web@1");
    let b = Upstream::new(echo("B").await, "web@2");
    let router = router().await;
    router.set_apps(&["web", "api"]);
    router.switch("web", Some(a.clone()));

    let uri = format!("http://{}/download", router.local_addr());
    let mut download = send(Request::get(uri).body(Full::<Bytes>::default()).unwrap()).await;
    chunks.send(Bytes::from("first,")).await.unwrap();
    let first = download.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first,");
    assert_eq!(a.in_flight(), 1);

    router.switch("web", Some(b));
    assert!(get(&router, "localhost", "/").await.body.starts_with("B "));
    assert!(!Router::drain(&a, Duration::from_millis(20)).await);

    let drained = tokio::spawn({
        let a = a.clone();
        async move { Router::drain(&a, Duration::from_secs(60)).await }
    });
    chunks.send(Bytes::from("second,")).await.unwrap();
    chunks.send(Bytes::from("last")).await.unwrap();
    drop(chunks);
    let rest = download.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second,last");
    assert!(drained.await.unwrap());
    assert_eq!(a.in_flight(), 0);
}
