use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use shipgate_proxy::Upstream;

use crate::helpers::{echo, read, router, send_h2};

#[tokio::test]
async fn forwards_h2c_requests_to_an_http1_upstream_with_the_authority_as_host() {
    let router = router().await;
    router.switch("web", Some(Upstream::new(echo("A").await, "web@1.0.0")));
    router.set_apps(&["web", "api"]);
    let addr = router.local_addr();

    let request = |n: u32| {
        Request::post(format!("http://{addr}/orders/{n}?via=h2"))
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::from(format!("body {n}"))))
            .unwrap()
    };
    // Two requests at once: on one h2c connection they are two streams.
    let (first, second) = tokio::join!(send_h2(request(1)), send_h2(request(2)));
    for (n, response) in [(1, first), (2, second)] {
        assert_eq!(response.version(), Version::HTTP_2);
        let reply = read(response).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(
            reply.body,
            format!(
                "A POST /orders/{n}?via=h2 for=127.0.0.1 proto=http host={addr} secret=- body=body {n}"
            )
        );
    }
}

#[tokio::test]
async fn answers_h2c_requests_with_a_problem_when_nothing_is_live() {
    let router = router().await;
    let req = Request::get(format!("http://{}/", router.local_addr()))
        .body(Full::default())
        .unwrap();
    let response = send_h2(req).await;
    assert_eq!(response.version(), Version::HTTP_2);
    let reply = read(response).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.content_type, "application/problem+json");
}
