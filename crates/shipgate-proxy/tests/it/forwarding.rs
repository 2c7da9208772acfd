use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::Full;
use shipgate_proxy::Upstream;
use tokio::net::TcpListener;

use crate::helpers::{echo, get, read, router, send};

#[tokio::test]
async fn forwards_method_path_query_and_body_and_returns_the_backend_answer() {
    let router = router().await;
    router.switch("web", Some(Upstream::new(echo("A").await, "web@1.0.0")));
    router.set_apps(&["web", "api"]);

    let req = Request::post(format!(
        "http://{}/orders/7?expand=lines&x=1",
        router.local_addr()
    ))
    .header(HOST, "shop.example:8101")
    .header("connection", "keep-alive, x-secret")
    .header("x-secret", "hop-by-hop")
    .body(Full::new(Bytes::from("hello body")))
    .unwrap();
    let reply = read(send(req).await).await;

    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        reply.body,
        "A POST /orders/7?expand=lines&x=1 for=127.0.0.1 proto=http host=shop.example:8101 secret=- body=hello body"
    );
}

#[tokio::test]
async fn answers_503_problem_when_nothing_is_live() {
    let router = router().await;

    let reply = get(&router, "localhost", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["detail"], "no app is live in environment `test`");

    router.set_apps(&["web", "api"]);
    let reply = get(&router, "localhost", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        problem,
        serde_json::json!({
            "type": "about:blank",
            "title": "no live release",
            "status": 503,
            "detail": "environment `test` has no live release of `web` yet; promote one: shipgate promote web@VERSION --to test",
        })
    );
}

#[tokio::test]
async fn routes_by_the_first_label_of_the_host() {
    let router = router().await;
    router.switch("web", Some(Upstream::new(echo("web").await, "web@1.0.0")));
    router.switch("api", Some(Upstream::new(echo("api").await, "api@2.0.0")));
    router.set_apps(&["web", "api"]);

    let reached = |reply: crate::helpers::Reply| reply.body.split(' ').next().unwrap().to_owned();
    assert_eq!(reached(get(&router, "api.localhost", "/").await), "api");
    assert_eq!(
        reached(get(&router, "API.localhost:8101", "/").await),
        "api"
    );
    assert_eq!(reached(get(&router, "web.localhost", "/").await), "web");
    assert_eq!(reached(get(&router, "127.0.0.1:8101", "/").await), "web");
    assert_eq!(reached(get(&router, "docs.localhost", "/").await), "web");

    // A Host naming a known app that is not live gets 503, never another app's answer.
    router.switch("api", None);
    let reply = get(&router, "api.localhost", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.body.contains("no live release of `api`"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn answers_502_problem_naming_the_upstream_when_it_is_down() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let router = router().await;
    let upstream = Upstream::new(closed, "web@1.4.2");
    router.switch("web", Some(upstream.clone()));
    router.set_apps(&["web", "api"]);

    let reply = get(&router, "localhost", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(problem["status"], 502);
    assert!(
        problem["detail"].as_str().unwrap().contains("`web@1.4.2`"),
        "{problem}"
    );
    assert_eq!(upstream.in_flight(), 0);
}
