use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use shipgate_proxy::{StatusClasses, Upstream, render_prometheus};

use crate::helpers::{backend, get, post, router};

/// A backend that answers by path: `/ok` 200 "ok", `/missing` 404 "not found", else 500 "boom".
async fn by_path() -> std::net::SocketAddr {
    backend(|req: http::Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_owned();
        req.into_body().collect().await.unwrap();
        let (status, body) = match path.as_str() {
            "/ok" => (StatusCode::OK, "ok"),
            "/missing" => (StatusCode::NOT_FOUND, "not found"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "boom"),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    })
    .await
}

#[tokio::test]
async fn counters_are_exact_for_a_known_mix_of_requests() {
    let router = router().await;
    router.set_apps(&["web"]);
    let unavailable = get(&router, "localhost", "/").await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);

    router.switch("web", Some(Upstream::new(by_path().await, "web@1.0.0")));
    for (path, times, status) in [
        ("/ok", 7, StatusCode::OK),
        ("/missing", 2, StatusCode::NOT_FOUND),
        ("/fail", 3, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        for _ in 0..times {
            assert_eq!(post(&router, path, "hello").await.status, status);
        }
    }

    let metrics = router.metrics();
    let [none, release] = metrics.as_slice() else {
        panic!("expected two releases: {metrics:#?}")
    };

    assert_eq!((none.app.as_str(), none.label.as_str()), ("web", "none"));
    assert!(!none.live);
    let one_error = StatusClasses {
        server_error: 1,
        ..StatusClasses::default()
    };
    assert_eq!(none.requests, one_error);
    assert_eq!(none.request_bytes, 0);
    assert_eq!(none.response_bytes, unavailable.body.len() as u64);

    assert_eq!(
        (release.app.as_str(), release.label.as_str()),
        ("web", "web@1.0.0")
    );
    assert!(release.live);
    let mix = StatusClasses {
        success: 7,
        client_error: 2,
        server_error: 3,
        ..StatusClasses::default()
    };
    assert_eq!(release.requests, mix);
    assert_eq!(release.latency.count, 12);
    let cumulative: Vec<u64> = release.latency.buckets.iter().map(|b| b.count).collect();
    assert!(cumulative.is_sorted(), "{cumulative:?}");
    assert!(cumulative.last().unwrap() <= &12);
    assert_eq!(release.request_bytes, 12 * 5);
    assert_eq!(release.response_bytes, 7 * 2 + 2 * 9 + 3 * 4);
    assert_eq!(release.last_minute.requests, 12);
    assert_eq!(release.last_minute.error_rate, 0.25);
    assert!(release.last_minute.requests_per_second > 0.0);
    assert!(release.last_minute.p50_ms.is_some() && release.last_minute.p99_ms.is_some());

    let json = serde_json::to_value(release).unwrap();
    assert_eq!(json["requests"]["2xx"], 7);
    assert_eq!(json["last_minute"]["requests"], 12);

    let text = render_prometheus(&[("test".to_owned(), metrics.clone())]);
    let expected = format!(
        r#"shipgate_requests_total{{app="web",env="test",release="none",class="5xx"}} 1
shipgate_requests_total{{app="web",env="test",release="web@1.0.0",class="1xx"}} 0
shipgate_requests_total{{app="web",env="test",release="web@1.0.0",class="2xx"}} 7
shipgate_requests_total{{app="web",env="test",release="web@1.0.0",class="3xx"}} 0
shipgate_requests_total{{app="web",env="test",release="web@1.0.0",class="4xx"}} 2
shipgate_requests_total{{app="web",env="test",release="web@1.0.0",class="5xx"}} 3
shipgate_request_duration_seconds_bucket{{app="web",env="test",release="web@1.0.0",le="+Inf"}} 12
shipgate_request_duration_seconds_count{{app="web",env="test",release="web@1.0.0"}} 12
shipgate_request_bytes_total{{app="web",env="test",release="none"}} 0
shipgate_request_bytes_total{{app="web",env="test",release="web@1.0.0"}} 60
shipgate_response_bytes_total{{app="web",env="test",release="none"}} {}
shipgate_response_bytes_total{{app="web",env="test",release="web@1.0.0"}} 44"#,
        unavailable.body.len()
    );
    for line in expected.lines() {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    for family in [
        "# TYPE shipgate_requests_total counter",
        "# TYPE shipgate_request_duration_seconds histogram",
        "# TYPE shipgate_request_bytes_total counter",
        "# TYPE shipgate_response_bytes_total counter",
    ] {
        assert_eq!(text.lines().filter(|l| *l == family).count(), 1, "{text}");
    }

    // A minute later the counters stand, and the window has let the requests go.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    let later = router.metrics();
    assert_eq!(later[1].requests, mix);
    assert_eq!(later[1].last_minute.requests, 0);
    assert_eq!(later[1].last_minute.requests_per_second, 0.0);
    assert_eq!(later[1].last_minute.p99_ms, None);
}

#[tokio::test]
async fn a_release_keeps_its_counters_after_a_switch_away_and_back() {
    let router = router().await;
    router.set_apps(&["web"]);
    let ok = by_path().await;
    router.switch("web", Some(Upstream::new(ok, "web@1")));
    post(&router, "/ok", "a").await;
    router.switch("web", Some(Upstream::new(ok, "web@2")));
    post(&router, "/ok", "bb").await;
    post(&router, "/ok", "bb").await;
    router.switch("web", Some(Upstream::new(ok, "web@1")));
    post(&router, "/ok", "a").await;

    let counted: Vec<(String, bool, u64, u64)> = router
        .metrics()
        .into_iter()
        .map(|m| (m.label, m.live, m.requests.success, m.request_bytes))
        .collect();
    assert_eq!(
        counted,
        [
            ("web@1".to_owned(), true, 2, 2),
            ("web@2".to_owned(), false, 2, 4),
        ]
    );
}
