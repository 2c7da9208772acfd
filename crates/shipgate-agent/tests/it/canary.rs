//! A canary on an environment placed on hosts: every host applies each step, or none does.

use std::net::SocketAddr;

use shipgate_core::canary::Sticky;
use shipgate_deploy::{CanaryRoute, Driver, RouteTarget};

use crate::{ENV, Fleet};

const ALL: [&str; 3] = ["host1", "host2", "host3"];

fn canary(target: &RouteTarget, weight: f64, window: u64) -> Option<CanaryRoute> {
    Some(CanaryRoute {
        target: target.clone(),
        weight,
        mirror: false,
        sticky: Sticky::None,
        window,
    })
}

/// `count` GETs through the router at `addr`, each answered 200.
async fn load(addr: SocketAddr, count: usize) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..count {
        let answer = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
    }
}

/// (window, canary requests, stable requests) as each host counts them.
async fn on_each_host(fleet: &Fleet) -> Vec<Option<(u64, u64, u64)>> {
    let mut each = Vec::new();
    for (_, driver, _) in &fleet.hosts {
        let figures = driver.canary_figures(ENV, "web").await;
        each.push(figures.map(|f| (f.window, f.canary.requests, f.stable.requests)));
    }
    each
}

/// Multi-threaded: the fleet stops its instances when dropped, from within the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_applies_a_canary_step_or_none_does_and_their_figures_are_summed() {
    let fleet = Fleet::start(3).await;
    let stable = fleet
        .start_instance("web-production-1", "web@1", &ALL)
        .await;
    fleet
        .placement
        .switch(ENV, "web", Some(stable))
        .await
        .unwrap();
    let new = fleet
        .start_instance("web-production-2", "web@2", &ALL)
        .await;
    let placement = &fleet.placement;

    // Every request to the canary, on each host's own instance of it.
    placement
        .set_canary(ENV, "web", canary(&new, 100.0, 1))
        .await
        .unwrap();
    for (_, _, router) in &fleet.hosts {
        load(*router, 10).await;
    }
    let figures = placement.canary_figures(ENV, "web").await.unwrap();
    assert_eq!(
        (
            figures.window,
            figures.canary.requests,
            figures.stable.requests
        ),
        (1, 30, 0)
    );
    assert_eq!(figures.canary.latencies_ms.len(), 30);
    assert_eq!(on_each_host(&fleet).await, vec![Some((1, 10, 0)); 3]);

    // The next step, in the same window: every host sends its requests to the stable release.
    placement
        .set_canary(ENV, "web", canary(&new, 0.0, 1))
        .await
        .unwrap();
    for (_, _, router) in &fleet.hosts {
        load(*router, 5).await;
    }
    assert_eq!(on_each_host(&fleet).await, vec![Some((1, 10, 5)); 3]);

    // A step that one host cannot take (the new canary does not run there) is taken by none.
    let third = fleet
        .start_instance("web-production-3", "web@3", &ALL[..2])
        .await;
    let refused = placement
        .set_canary(ENV, "web", canary(&third, 50.0, 2))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("was not changed: on host host3"),
        "{refused}"
    );
    assert_eq!(on_each_host(&fleet).await, vec![Some((1, 10, 5)); 3]);

    // One that a host fails to apply (its router is gone) is undone on the hosts that took it:
    // they have the canary they had back, its window and figures with it.
    let (_, host3, _) = &fleet.hosts[2];
    assert_eq!(host3.retain_routers(&[]).await, vec![ENV.to_owned()]);
    let refused = placement
        .set_canary(ENV, "web", canary(&new, 50.0, 2))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("on host host3"), "{refused}");
    assert!(refused.contains("put back (host1, host2)"), "{refused}");
    let expected = vec![Some((1, 10, 5)), Some((1, 10, 5)), None];
    assert_eq!(on_each_host(&fleet).await, expected);
    for (_, _, router) in &fleet.hosts[..2] {
        load(*router, 1).await;
    }
    let figures = placement.canary_figures(ENV, "web").await.unwrap();
    assert_eq!(
        (
            figures.window,
            figures.canary.requests,
            figures.stable.requests
        ),
        (1, 20, 12),
        "still 0% to the canary"
    );

    // Removed everywhere; a host that had none before a refused step gets none back.
    host3.bind_router(crate::router_spec()).await.unwrap();
    placement.set_canary(ENV, "web", None).await.unwrap();
    assert_eq!(on_each_host(&fleet).await, vec![None; 3]);
    fleet.stop_instance("web-production-2", "host3").await;
    let refused = placement
        .set_canary(ENV, "web", canary(&new, 5.0, 3))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("on host host3"), "{refused}");
    assert_eq!(on_each_host(&fleet).await, vec![None; 3]);
    assert!(placement.canary_figures(ENV, "web").await.is_none());

    // An environment not placed on hosts is the local data plane's (which has no router here).
    let local = placement
        .set_canary("staging", "web", canary(&new, 5.0, 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        local.contains("no router is bound for environment staging"),
        "{local}"
    );
}
