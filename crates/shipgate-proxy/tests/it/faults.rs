//! HTTP faults in the router, over real TCP: an abort touches its share of requests on the
//! router's own HTTP/1.1 path and on hyper's (h2c), only what its path and header name, and a
//! delay holds each request at least as long as asked. What a fault touched is counted under
//! the release label `chaos`, never as the release's own.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use shipgate_core::chaos::{FaultAction, HttpFault};
use shipgate_proxy::{FAULTED, Router, StatusClasses, Upstream};

use crate::helpers::{echo, get, read, router, send_h2};

fn fault(action: FaultAction, percent: f64) -> HttpFault {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    HttpFault {
        id: 1,
        app: "web".into(),
        action,
        percent,
        path: None,
        header: None,
        until_ms: (now + Duration::from_secs(600)).as_millis() as i64,
    }
}

const ABORT: FaultAction = FaultAction::Abort { status: 503 };

async fn web() -> Router {
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(Upstream::new(echo("web@1").await, "web@1")));
    router
}

/// The counters of `label`.
fn counted(router: &Router, label: &str) -> StatusClasses {
    router
        .metrics()
        .into_iter()
        .find(|m| m.label == label)
        .map(|m| m.requests)
        .unwrap_or_default()
}

#[tokio::test]
async fn an_abort_touches_its_share_of_2000_requests_and_is_counted_apart() {
    let router = web().await;
    router.set_faults(vec![fault(ABORT, 10.0)]);
    let mut aborted = 0;
    for _ in 0..2000 {
        let reply = get(&router, "localhost", "/").await;
        match reply.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(reply.body.contains("injected 503"), "{}", reply.body);
                aborted += 1;
            }
            StatusCode::CREATED => {}
            other => panic!("{other}"),
        }
    }
    // 10% of 2000 is 200, with a standard deviation of 13.4: 140..=260 is 4.5 of them.
    assert!(
        (140..=260).contains(&aborted),
        "{aborted} of 2000 aborted at 10%"
    );
    let chaos = counted(&router, FAULTED);
    assert_eq!(chaos.server_error, aborted);
    let own = counted(&router, "web@1");
    assert_eq!((own.success, own.server_error), (2000 - aborted, 0));

    // The same over hyper's path (h2c), at 25% of 1000.
    router.set_faults(vec![fault(ABORT, 25.0)]);
    let mut aborted = 0;
    for _ in 0..1000 {
        let req = Request::get(format!("http://{}/", router.local_addr()))
            .body(Full::<Bytes>::default())
            .unwrap();
        if read(send_h2(req).await).await.status == StatusCode::SERVICE_UNAVAILABLE {
            aborted += 1;
        }
    }
    // 250 of 1000, standard deviation 13.7.
    assert!(
        (190..=310).contains(&aborted),
        "{aborted} of 1000 aborted at 25%"
    );

    router.set_faults(Vec::new());
    for _ in 0..50 {
        assert_eq!(
            get(&router, "localhost", "/").await.status,
            StatusCode::CREATED
        );
    }
}

#[tokio::test]
async fn path_and_header_match_only_what_they_name() {
    let router = web().await;
    let mut only = fault(ABORT, 100.0);
    only.path = Some("/api/*".into());
    only.header = Some(("x-chaos".into(), "1".into()));
    router.set_faults(vec![only]);
    let send = |path: &str, chaos: Option<&str>| {
        let mut req = Request::get(format!("http://{}{path}", router.local_addr()));
        if let Some(v) = chaos {
            req = req.header("X-Chaos", v);
        }
        let req = req.body(Full::<Bytes>::default()).unwrap();
        async move { read(crate::helpers::send(req).await).await.status }
    };
    assert_eq!(
        send("/api/orders?x=1", Some("1")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(send("/api/orders", None).await, StatusCode::CREATED);
    assert_eq!(send("/api/orders", Some("2")).await, StatusCode::CREATED);
    assert_eq!(send("/other", Some("1")).await, StatusCode::CREATED);
    assert_eq!(send("/apix", Some("1")).await, StatusCode::CREATED);
    // Another app's requests are never touched.
    let mut other = fault(ABORT, 100.0);
    other.app = "api".into();
    router.set_faults(vec![other]);
    assert_eq!(send("/api/orders", Some("1")).await, StatusCode::CREATED);
}

#[tokio::test]
async fn a_delay_holds_each_request_at_least_its_delay_less_its_jitter() {
    let router = web().await;
    let delay = FaultAction::Delay {
        delay_ms: 300,
        jitter_ms: 100,
    };
    router.set_faults(vec![fault(delay, 100.0)]);
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(
            get(&router, "localhost", "/").await.status,
            StatusCode::CREATED
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
    }
    assert_eq!(counted(&router, FAULTED).success, 20);
    assert_eq!(counted(&router, "web@1").success, 0);

    // A fault whose end has passed does nothing, though nobody took it away.
    let mut ended = fault(ABORT, 100.0);
    ended.until_ms = 1;
    router.set_faults(vec![ended]);
    assert_eq!(
        get(&router, "localhost", "/").await.status,
        StatusCode::CREATED
    );
}
