//! A canary's share of an app's requests: by weight, pinned by a cookie or a header, chosen by
//! testers, mirrored; and the figures of both sides in the canary's window.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use shipgate_core::canary::Sticky;
use shipgate_proxy::{CANARY_SAMPLE, Canary, Router, Upstream};

use crate::helpers::{Raw, backend, echo, read, router, send};

/// Only a guard against waiting forever; no test asserts on time.
const PATIENCE: Duration = Duration::from_secs(20);

/// GET / with these extra headers, on a connection of its own; the first letter of the answer
/// (which upstream answered).
async fn side(router: &Router, headers: &[(&str, &str)]) -> char {
    let mut req =
        Request::get(format!("http://{}/", router.local_addr())).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let reply = read(send(req.body(Full::<Bytes>::default()).unwrap()).await).await;
    reply.body.chars().next().unwrap()
}

fn canary(upstream: &Upstream, weight: f64, sticky: Sticky, window: u64) -> Option<Canary> {
    Some(Canary {
        upstream: upstream.clone(),
        weight,
        mirror: false,
        sticky,
        window,
    })
}

/// A router whose app `web` is live on an `A` echo, with a `B` echo as the canary-to-be.
async fn web_with_canary_upstream() -> (Router, Upstream) {
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(Upstream::new(echo("A").await, "web@1")));
    (router, Upstream::new(echo("B").await, "web@2"))
}

/// The side that answered: the first letter of the body.
fn letter(answer: &crate::helpers::Answer) -> char {
    answer.text().chars().next().unwrap()
}

#[tokio::test]
async fn a_canary_takes_its_share_pinned_clients_stay_and_testers_choose() {
    let (router, canary_upstream) = web_with_canary_upstream().await;
    let set = |weight| canary(&canary_upstream, weight, Sticky::Cookie, 1);
    assert!(router.set_canary("web", set(5.0)).is_none());

    let mut to_canary = 0;
    for _ in 0..2000 {
        if side(&router, &[]).await == 'B' {
            to_canary += 1;
        }
    }
    // 5% of 2,000 is 100; ±1.5 points is ±30.
    assert!((70..=130).contains(&to_canary), "{to_canary} of 2000");
    // The router counted the canary's answers apart, for its release and in the window.
    let counted: u64 = router
        .metrics()
        .iter()
        .filter(|m| m.label == "web@2")
        .map(|m| m.requests.success)
        .sum();
    assert_eq!(counted, to_canary);
    let figures = router.canary_figures("web").unwrap();
    assert_eq!(
        (
            figures.window,
            figures.canary.requests,
            figures.stable.requests
        ),
        (1, to_canary, 2000 - to_canary)
    );

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
    // Testers choose, at any weight, 0% included.
    router.set_canary("web", set(0.0));
    for _ in 0..50 {
        assert_eq!(side(&router, &[]).await, 'A');
    }
    assert_eq!(side(&router, &[("x-shipgate-canary", "always")]).await, 'B');
    let pinned_to_canary = "shipgate-canary=alice";
    assert_eq!(side(&router, &[("cookie", pinned_to_canary)]).await, 'A');
    router.set_canary("web", set(100.0));
    assert_eq!(side(&router, &[("x-shipgate-canary", "never")]).await, 'A');
    assert_eq!(side(&router, &[]).await, 'B');
    // Without a canary, every request to the stable release, and no figures.
    let before = router.set_canary("web", None).unwrap();
    assert_eq!((before.upstream.label(), before.weight), ("web@2", 100.0));
    assert_eq!(side(&router, &[("x-shipgate-canary", "always")]).await, 'A');
    assert!(router.canary_figures("web").is_none());
}

/// Sends `GET /` for each user (its `x-user` header) over a few keep-alive connections of the
/// router's own HTTP/1.1 path; answers which users the canary answered.
async fn sides_of_users(router: &Router, users: usize) -> Vec<bool> {
    const CONNECTIONS: usize = 4;
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let addr = router.local_addr();
        clients.push(tokio::spawn(async move {
            let mut raw = Raw::open(addr).await;
            let mut sides = Vec::new();
            for user in (c..users).step_by(CONNECTIONS) {
                let name = format!("user-{user}");
                let answer = raw.request("GET", "/", &[("x-user", &name)]).await;
                assert_eq!(answer.status, 201);
                assert_eq!(
                    answer.header("set-cookie"),
                    None,
                    "header stickiness sets no cookie"
                );
                sides.push((user, letter(&answer) == 'B'));
            }
            sides
        }));
    }
    let mut all = vec![false; users];
    for client in clients {
        for (user, on_canary) in client.await.unwrap() {
            all[user] = on_canary;
        }
    }
    all
}

fn within(got: usize, of: usize, percent: f64, points: f64) {
    let share = got as f64 * 100.0 / of as f64;
    assert!(
        (share - percent).abs() <= points,
        "{got} of {of} ({share:.2}%) at {percent}%"
    );
}

#[tokio::test]
async fn shares_hold_on_the_routers_own_path_and_pinned_users_only_move_toward_the_canary() {
    let (router, canary_upstream) = web_with_canary_upstream().await;
    let sticky = Sticky::Header("x-user".into());
    const USERS: usize = 10_000;
    let mut before: Option<Vec<bool>> = None;
    for weight in [5.0, 25.0, 50.0] {
        router.set_canary("web", canary(&canary_upstream, weight, sticky.clone(), 1));
        let sides = sides_of_users(&router, USERS).await;
        let on_canary = sides.iter().filter(|c| **c).count();
        within(on_canary, USERS, weight, 1.5);
        if let Some(before) = &before {
            for (user, (was, is)) in before.iter().zip(&sides).enumerate() {
                assert!(
                    !was || *is,
                    "user-{user} left the canary as its weight grew"
                );
            }
        }
        // Asked again at the same weight, every user is where it was.
        let again = sides_of_users(&router, 500).await;
        assert_eq!(again, sides[..500]);
        before = Some(sides);
    }
    // The window counted every request of both sides, answered on connections that went from
    // one upstream to the other.
    let figures = router.canary_figures("web").unwrap();
    assert_eq!(
        figures.canary.requests + figures.stable.requests,
        3 * (USERS as u64 + 500)
    );
}

/// The pin in a `Set-Cookie` the router gave.
fn given_pin(answer: &crate::helpers::Answer) -> Option<String> {
    let cookie = answer.header("set-cookie")?;
    let (pair, attributes) = cookie.split_once(';').unwrap();
    assert_eq!(attributes.trim(), "Path=/; HttpOnly; SameSite=Lax");
    let pin = pair.strip_prefix("shipgate-canary=").unwrap();
    assert!(
        pin.len() == 32 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
        "{pin}"
    );
    Some(pin.to_owned())
}

#[tokio::test]
async fn a_client_without_the_cookie_is_given_one_and_keeps_its_side_as_the_weight_grows() {
    let (router, canary_upstream) = web_with_canary_upstream().await;
    let set = |weight| canary(&canary_upstream, weight, Sticky::Cookie, 1);
    router.set_canary("web", set(5.0));
    let mut raw = Raw::open(router.local_addr()).await;
    const CLIENTS: usize = 10_000;
    let mut clients: Vec<(String, bool)> = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let answer = raw.request("GET", "/", &[]).await;
        let pin = given_pin(&answer).expect("a client without the cookie gets one");
        clients.push((pin, letter(&answer) == 'B'));
    }
    let on_canary = clients.iter().filter(|(_, c)| *c).count();
    within(on_canary, CLIENTS, 5.0, 1.5);
    let distinct: std::collections::HashSet<&String> = clients.iter().map(|(p, _)| p).collect();
    assert_eq!(distinct.len(), CLIENTS, "every pin is new");

    // The first answer was the new pin's side: with the cookie, each client stays there, and
    // as the weight grows it may only move to the canary.
    let sample: Vec<(String, bool)> = clients
        .iter()
        .filter(|(_, c)| *c)
        .take(100)
        .chain(clients.iter().filter(|(_, c)| !*c).take(300))
        .cloned()
        .collect();
    let mut sides: Vec<bool> = sample.iter().map(|(_, c)| *c).collect();
    for weight in [5.0, 25.0, 50.0] {
        router.set_canary("web", set(weight));
        for ((pin, _), was) in sample.iter().zip(sides.iter_mut()) {
            let cookie = format!("lang=en; shipgate-canary={pin}");
            let answer = raw.request("GET", "/", &[("cookie", &cookie)]).await;
            assert_eq!(
                given_pin(&answer),
                None,
                "a client with its cookie keeps it"
            );
            let now = letter(&answer) == 'B';
            assert!(!*was || now, "{pin} left the canary at {weight}%");
            if weight == 5.0 {
                assert_eq!(now, *was, "{pin} changed side at the same weight");
            }
            *was = now;
        }
    }
    // At 50% a fair share of the 300 once on the stable side met the canary.
    let moved = sides[100..].iter().filter(|c| **c).count();
    assert!((60..=240).contains(&moved), "{moved} of 300 moved");
}

/// A backend answering `/fail` with 500 and anything else with `B` (200).
async fn failing_on_request() -> SocketAddr {
    backend(|req: Request<Incoming>| async move {
        let mut response = Response::new(Full::new(Bytes::from("B")));
        if req.uri().path() == "/fail" {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    })
    .await
}

#[tokio::test]
async fn figures_count_each_side_in_its_window_with_a_bounded_sample() {
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(Upstream::new(echo("A").await, "web@1")));
    let canary_upstream = Upstream::new(failing_on_request().await, "web@2");
    let set = |weight, window| canary(&canary_upstream, weight, Sticky::None, window);
    router.set_canary("web", set(100.0, 7));
    let mut raw = Raw::open(router.local_addr()).await;

    // More requests than the sample holds: every one counted, the sample bounded.
    const SENT: u64 = CANARY_SAMPLE as u64 + 904;
    for n in 0..SENT {
        let path = if n % 100 == 0 { "/fail" } else { "/" };
        raw.request("GET", path, &[]).await;
    }
    let figures = router.canary_figures("web").unwrap();
    assert_eq!(figures.window, 7);
    assert_eq!(
        (figures.canary.requests, figures.canary.errors),
        (SENT, SENT.div_ceil(100))
    );
    assert_eq!(figures.canary.latencies_ms.len(), CANARY_SAMPLE);
    assert!(
        figures
            .canary
            .latencies_ms
            .iter()
            .all(|ms| *ms >= 0.0 && ms.is_finite())
    );
    assert_eq!(figures.stable.requests, 0);

    // The same window goes on counting, whatever the weight; the stable side counts its own.
    router.set_canary("web", set(0.0, 7));
    for _ in 0..100 {
        assert_eq!(letter(&raw.request("GET", "/", &[]).await), 'A');
    }
    let figures = router.canary_figures("web").unwrap();
    assert_eq!(
        (figures.canary.requests, figures.stable.requests),
        (SENT, 100)
    );
    assert_eq!(
        (figures.stable.errors, figures.stable.latencies_ms.len()),
        (0, 100)
    );

    // A canary that does not answer: the router's own 502s are its errors.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = Upstream::new(closed, "web@3");
    router.set_canary("web", canary(&gone, 100.0, Sticky::None, 8));
    for _ in 0..10 {
        let answer = raw.request("GET", "/", &[]).await;
        assert_eq!(answer.status, 502);
    }
    // Another window started both sides at zero.
    let figures = router.canary_figures("web").unwrap();
    assert_eq!(figures.window, 8);
    assert_eq!(
        (
            figures.canary.requests,
            figures.canary.errors,
            figures.stable.requests
        ),
        (10, 10, 0)
    );
    assert_eq!(figures.canary.latencies_ms.len(), 10);
    // A change undone at once (a step one host of several could not take) takes up the
    // figures of the window it replaced again.
    router.set_canary("web", canary(&gone, 100.0, Sticky::None, 9));
    assert_eq!(router.canary_figures("web").unwrap().canary.requests, 0);
    router.set_canary("web", canary(&gone, 100.0, Sticky::None, 8));
    let figures = router.canary_figures("web").unwrap();
    assert_eq!((figures.window, figures.canary.requests), (8, 10));

    router.set_canary("web", None);
    assert!(router.canary_figures("web").is_none());
}

/// A backend that answers `B` and notes each request's method and mirror header.
async fn noting(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    backend(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let mirrored = req.headers().contains_key("x-shipgate-mirror");
            let note = format!("{} {} mirrored={mirrored}", req.method(), req.uri());
            seen.lock().unwrap().push(note);
            Response::new(Full::new(Bytes::from("B")))
        }
    })
    .await
}

#[tokio::test]
async fn a_mirror_copies_reads_to_the_canary_while_users_meet_only_the_stable_release() {
    let router = router().await;
    router.set_apps(&["web"]);
    router.switch("web", Some(Upstream::new(echo("A").await, "web@1")));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let canary_upstream = Upstream::new(noting(seen.clone()).await, "web@2");
    router.set_canary(
        "web",
        Some(Canary {
            upstream: canary_upstream,
            weight: 100.0,
            mirror: true,
            sticky: Sticky::Cookie,
            window: 1,
        }),
    );
    let mut raw = Raw::open(router.local_addr()).await;
    // A write is never copied.
    for _ in 0..10 {
        let answer = raw
            .request("POST", "/order", &[("content-length", "0")])
            .await;
        assert_eq!(letter(&answer), 'A');
    }
    for n in 0..40 {
        let answer = raw.request("GET", &format!("/page/{n}"), &[]).await;
        assert_eq!((answer.status, letter(&answer)), (201, 'A'));
        assert_eq!(answer.header("set-cookie"), None);
    }
    let answer = raw.request("HEAD", "/page/head", &[]).await;
    assert_eq!(answer.status, 201);

    // The copies are answered in the background: wait for the canary's side to count them.
    let mirrored = async {
        loop {
            let figures = router.canary_figures("web").unwrap();
            if figures.canary.requests >= 41 {
                return figures;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let figures = tokio::time::timeout(PATIENCE, mirrored).await.unwrap();
    assert_eq!(figures.canary.requests, 41);
    assert_eq!(figures.canary.errors, 0);
    assert_eq!(figures.stable.requests, 51);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 41, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.ends_with("mirrored=true")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|s| s.starts_with("POST")), "{seen:?}");
    assert!(
        seen.contains(&"HEAD /page/head mirrored=true".to_owned()),
        "{seen:?}"
    );
    let counted: u64 = router
        .metrics()
        .iter()
        .filter(|m| m.label == "web@2")
        .map(|m| m.requests.success)
        .sum();
    assert_eq!(
        counted, 41,
        "the canary release counts its mirrored answers"
    );

    // A tester may still meet the canary itself.
    let answer = raw
        .request("GET", "/", &[("x-shipgate-canary", "always")])
        .await;
    assert_eq!(letter(&answer), 'B');
}
