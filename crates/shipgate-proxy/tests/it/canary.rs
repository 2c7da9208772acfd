//! A canary's share of an app's requests: by weight, pinned by a cookie, chosen by testers.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use shipgate_proxy::Upstream;

use crate::helpers::{echo, read, router, send};

/// GET / with these extra headers; the first letter of the answer (which upstream answered).
async fn side(router: &shipgate_proxy::Router, headers: &[(&str, &str)]) -> char {
    let mut req =
        Request::get(format!("http://{}/", router.local_addr())).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let reply = read(send(req.body(Full::<Bytes>::default()).unwrap()).await).await;
    reply.body.chars().next().unwrap()
}

#[tokio::test]
async fn a_canary_takes_its_share_pinned_clients_stay_and_testers_choose() {
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(Upstream::new(echo("A").await, "web@1")));
    let canary = Upstream::new(echo("B").await, "web@2");
    assert!(
        router
            .set_canary("web", Some((canary.clone(), 5.0)))
            .is_none()
    );

    let mut to_canary = 0;
    for _ in 0..2000 {
        if side(&router, &[]).await == 'B' {
            to_canary += 1;
        }
    }
    // 5% of 2,000 is 100; ±1.5 points is ±30.
    assert!((70..=130).contains(&to_canary), "{to_canary} of 2000");
    // The router counted the canary's answers apart.
    let counted: u64 = router
        .metrics()
        .iter()
        .filter(|m| m.label == "web@2")
        .map(|m| m.requests.success)
        .sum();
    assert_eq!(counted, to_canary);

    // A pinned client keeps its side.
    for client in ["alice", "bob", "carol", "dave"] {
        let cookie = format!("theme=dark; shipgate-canary={client}");
        let first = side(&router, &[("cookie", &cookie)]).await;
        for _ in 0..20 {
            assert_eq!(
                side(&router, &[("cookie", &cookie)]).await,
                first,
                "{client}"
            );
        }
    }
    // Testers choose, at any weight.
    router.set_canary("web", Some((canary.clone(), 0.0)));
    assert_eq!(side(&router, &[("x-shipgate-canary", "always")]).await, 'B');
    assert_eq!(side(&router, &[]).await, 'A');
    router.set_canary("web", Some((canary, 100.0)));
    assert_eq!(side(&router, &[("x-shipgate-canary", "never")]).await, 'A');
    assert_eq!(side(&router, &[]).await, 'B');
    // Without a canary, every request to the stable release.
    assert_eq!(router.set_canary("web", None).unwrap().label(), "web@2");
    assert_eq!(side(&router, &[("x-shipgate-canary", "always")]).await, 'A');
}
