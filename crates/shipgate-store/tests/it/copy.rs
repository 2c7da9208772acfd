//! `store copy`: a SQLite store with history and artifacts into an empty PostgreSQL database,
//! everything equal on the other side, the chain verified there, and a target that is not
//! empty refused.

use shipgate_core::config::DataLocation;
use shipgate_core::{PromotionState, Version};
use shipgate_store::cluster::TempCluster;
use shipgate_store::{
    EventFilter, NewPromotion, PromotionFilter, SqlStore, Store, copy_store, verify_chain,
};

use crate::event_log::store_with_history;
use crate::fixtures::{app, env_of};

async fn empty_postgres() -> SqlStore {
    let url = TempCluster::shared()
        .unwrap()
        .fresh_database("copy")
        .await
        .unwrap();
    SqlStore::open_at(&DataLocation::Postgres(url))
        .await
        .unwrap()
}

#[tokio::test]
async fn everything_is_copied_and_the_chain_verifies_on_the_target() {
    let source = store_with_history().await;
    let artifacts = source.dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let first = source.store.releases(None).await.unwrap().pop().unwrap();
    std::fs::write(
        artifacts.join(format!("{}.tar", first.digest.hex())),
        b"archive bytes",
    )
    .unwrap();
    source.store.freeze(None, "copying", "alice").await.unwrap();
    let target = empty_postgres().await;

    let report = copy_store(&source.store, &target, Some(&artifacts))
        .await
        .unwrap();

    let all = EventFilter::default();
    assert_eq!(
        target.events(all.clone()).await.unwrap(),
        source.store.events(all).await.unwrap()
    );
    assert_eq!(report.events_verified, 10);
    assert_eq!(
        target.releases(None).await.unwrap(),
        source.store.releases(None).await.unwrap()
    );
    let every = PromotionFilter::default();
    assert_eq!(
        target.promotions(every.clone()).await.unwrap(),
        source.store.promotions(every).await.unwrap()
    );
    assert_eq!(
        target.live(None).await.unwrap(),
        source.store.live(None).await.unwrap()
    );
    assert_eq!(
        target.freezes().await.unwrap(),
        source.store.freezes().await.unwrap()
    );
    assert_eq!((report.artifacts, report.artifact_bytes), (1, 13));
    assert_eq!(
        report.artifacts_missing.len(),
        1,
        "the other release's file was not there"
    );
    assert_eq!(
        target.artifact_chunks(&first.digest).await.unwrap(),
        Some(1)
    );

    // The target goes on where the source stopped: next ids, the chain unbroken.
    let next = target
        .create_promotion(
            NewPromotion {
                app: app(),
                version: Version::parse("1.1.0").unwrap(),
                digest: crate::fixtures::digest(2),
                env: env_of("development"),
                kind: shipgate_core::PromotionKind::Promote,
                previous_version: None,
                override_reason: None,
                hotfix_reason: None,
            },
            "ci",
        )
        .await
        .unwrap();
    assert_eq!(next.id.0, 3);
    assert_eq!(next.state, PromotionState::Pending);
    let events = target.events(EventFilter::default()).await.unwrap();
    assert_eq!(verify_chain(&events).problem, None);
}

#[tokio::test]
async fn a_target_that_is_not_empty_is_refused_and_left_as_it_was() {
    let source = store_with_history().await;
    let target = empty_postgres().await;
    target.freeze(None, "already used", "bob").await.unwrap();
    let refused = copy_store(&source.store, &target, None).await.unwrap_err();
    assert!(
        refused.to_string().contains("the target is not empty"),
        "{refused}"
    );
    assert_eq!(
        target.events(EventFilter::default()).await.unwrap().len(),
        1
    );
}
