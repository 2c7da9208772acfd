//! A canary through the process driver's router: set, counted, kept for the process that takes
//! over.

use std::net::SocketAddr;
use std::path::Path;

use shipgate_core::canary::Sticky;
use shipgate_deploy::{CanaryRoute, Driver, ProcessDriver, RouteTarget, RouterSpec};
use tempfile::TempDir;

use crate::{HTTP_SERVER, request};

const ENV: &str = "production";

fn spec(listen: SocketAddr) -> RouterSpec {
    RouterSpec {
        env: ENV.into(),
        listen,
        apps: vec!["web".into()],
        request_timeout: None,
        faults: Vec::new(),
        dependencies: Vec::new(),
    }
}

/// Starts a Python HTTP server whose `/side.txt` says `side`.
async fn start(driver: &ProcessDriver, dir: &TempDir, id: &str, side: &str) -> RouteTarget {
    let release = dir.path().join(side);
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("side.txt"), side).unwrap();
    let mut req = request(dir, id, HTTP_SERVER);
    req.release_dir = release;
    let started = driver.start(req).await.unwrap();
    RouteTarget {
        instance_id: started.instance_id,
        addr: started.addr,
        label: format!("web@{side}"),
    }
}

/// Which side answers `GET /side.txt` through the router at `addr`, with these headers.
async fn side(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.get(format!("http://{addr}/side.txt"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap().text().await.unwrap()
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn counts(figures: Option<shipgate_deploy::CanaryFigures>) -> Option<(u64, u64, u64)> {
    figures.map(|f| (f.window, f.canary.requests, f.stable.requests))
}

#[tokio::test]
async fn a_canary_takes_its_share_is_counted_and_outlives_the_process_that_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("agent-state.json");
    let driver = ProcessDriver::keeping(kept.clone());
    let listen = free_addr();
    driver.bind_router(spec(listen)).await.unwrap();
    let stable = start(&driver, &dir, "web-production-1", "stable").await;
    let new = start(&driver, &dir, "web-production-2", "canary").await;
    driver.switch(ENV, "web", Some(stable)).await.unwrap();
    let canary = |weight| {
        Some(CanaryRoute {
            target: new.clone(),
            weight,
            mirror: false,
            sticky: Sticky::Cookie,
            window: 4,
        })
    };
    let refused = driver.set_canary(ENV, "web", canary(150.0)).await;
    assert!(refused.unwrap_err().to_string().contains("from 0 to 100"));
    let unbound = driver.set_canary("staging", "web", canary(5.0)).await;
    assert!(
        unbound
            .unwrap_err()
            .to_string()
            .contains("no router is bound")
    );
    assert_eq!(driver.canary_figures(ENV, "web").await, None);

    // At 0% only testers meet the canary.
    driver.set_canary(ENV, "web", canary(0.0)).await.unwrap();
    let tester = [("x-shipgate-canary", "always")];
    for _ in 0..3 {
        assert_eq!(side(listen, &tester).await, "canary");
    }
    for _ in 0..2 {
        assert_eq!(side(listen, &[]).await, "stable");
    }
    let counted = counts(driver.canary_figures(ENV, "web").await);
    assert_eq!(counted, Some((4, 3, 2)));
    assert!(Path::new(&kept).exists());

    // The process that takes over (the routers closed, the instances left running) adopts
    // the instances and finds the canary set as it was, in the same window.
    driver.close_routers().await;
    drop(driver);
    let next = ProcessDriver::keeping(kept);
    assert_eq!(next.adopt().await.len(), 2);
    next.bind_router(spec(listen)).await.unwrap();
    assert_eq!(
        counts(next.canary_figures(ENV, "web").await),
        Some((4, 0, 0))
    );
    assert_eq!(side(listen, &tester).await, "canary");
    assert_eq!(side(listen, &[]).await, "stable");
    assert_eq!(
        counts(next.canary_figures(ENV, "web").await),
        Some((4, 1, 1))
    );

    next.set_canary(ENV, "web", None).await.unwrap();
    assert_eq!(next.canary_figures(ENV, "web").await, None);
    assert_eq!(side(listen, &tester).await, "stable");
    next.stop_all(std::time::Duration::from_secs(5)).await;
}
