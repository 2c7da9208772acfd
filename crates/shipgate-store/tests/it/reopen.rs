//! Opening an existing database again applies no migration twice and keeps everything.

use shipgate_core::PromotionState;
use shipgate_store::{LiveChange, Store, verify_chain};

use crate::fixtures::{TestStore, app, digest};

async fn migrations(t: &TestStore) -> Vec<(i64, String)> {
    let mut raw = t.raw().await;
    sqlx::query_as("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .fetch_all(&mut raw)
        .await
        .unwrap()
}

on_both_backends! {
    async fn reopening_applies_no_migration_and_keeps_the_data() {
        let mut t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        let p = t.request("1.0.0", &digest(1), "development").await;
        let p = t.succeed(&p).await;
        let applied = migrations(&t).await;
        assert!(!applied.is_empty());
        assert_eq!(
            applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            (1..=applied.len() as i64).collect::<Vec<_>>()
        );
        let events = t.events().await;
        let live = t.store.live(None).await.unwrap();

        // Opening twice in a row must be harmless too.
        for _ in 0..2 {
            t.reopen().await;
            assert_eq!(
                migrations(&t).await,
                applied,
                "no migration was applied again"
            );
        }

        assert_eq!(t.store.releases(Some(&app())).await.unwrap().len(), 1);
        assert_eq!(t.store.promotion(p.id).await.unwrap(), Some(p));
        assert_eq!(t.store.live(None).await.unwrap(), live);
        assert_eq!(t.events().await, events);

        // The chain goes on from where it was.
        t.register("1.1.0", &digest(2)).await;
        let q = t.request("1.1.0", &digest(2), "development").await;
        t.step(&q, PromotionState::Deploying, LiveChange::Keep)
            .await;
        let all = t.events().await;
        assert_eq!(all.len(), events.len() + 3);
        assert_eq!(verify_chain(&all).problem, None);
    }
}

#[tokio::test]
async fn the_database_file_is_in_wal_mode() {
    let t = TestStore::open().await;
    let mut raw = t.raw().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}
