use shipgate_proxy::{ProxyError, Router};

use crate::helpers::router;

#[tokio::test]
async fn shutdown_frees_the_port() {
    let router = router().await;
    let addr = router.local_addr();

    let taken = Router::bind(addr, "staging").await.unwrap_err();
    assert!(matches!(taken, ProxyError::Bind { .. }));
    assert!(
        taken
            .to_string()
            .contains("change `listen` of environment `staging`"),
        "{taken}"
    );

    router.shutdown().await;
    Router::bind(addr, "test").await.unwrap().shutdown().await;
}

#[test]
fn router_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync>() {}
    shared::<Router>();
}
