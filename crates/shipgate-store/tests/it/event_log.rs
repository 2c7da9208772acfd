//! The event log: hash-chained, append-only at the database level, and any change made behind
//! the store's back is found by `verify_chain`.

use shipgate_core::PromotionState;
use shipgate_store::{LiveChange, Store, verify_chain};

use crate::fixtures::{TestStore, digest};

/// A store with a few events of different kinds.
pub async fn store_with_history() -> TestStore {
    let t = TestStore::open().await;
    t.register("1.0.0", &digest(1)).await;
    let p = t.request("1.0.0", &digest(1), "development").await;
    t.succeed(&p).await;
    t.register("1.1.0", &digest(2)).await;
    let q = t.request("1.1.0", &digest(2), "development").await;
    t.step(&q, PromotionState::Deploying, LiveChange::Keep)
        .await;
    t.step(&q, PromotionState::Failed, LiveChange::Keep).await;
    t
}

on_both_backends! {
    async fn the_chain_verifies() {
        let t = store_with_history().await;
        let events = t.events().await;
        assert_eq!(events.len(), 9);
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            (1..=9).collect::<Vec<_>>(),
            "ids are 1-based and gapless"
        );
        assert_eq!(events[0].prev_hash, shipgate_core::audit::GENESIS);
        for pair in events.windows(2) {
            assert_eq!(
                pair[1].prev_hash, pair[0].hash,
                "event {} follows event {}",
                pair[1].id, pair[0].id
            );
        }
        let report = verify_chain(&events);
        assert_eq!((report.checked, report.problem), (9, None));
    }

    async fn a_row_changed_behind_the_store_is_reported() {
        let t = store_with_history().await;
        let mut raw = t.raw().await;
        t.drop_append_only_guard(&mut raw, "update").await;
        let changed = sqlx::query("UPDATE events SET message = 'nothing happened here' WHERE id = 4")
            .execute(&mut raw)
            .await
            .unwrap();
        assert_eq!(changed.rows_affected(), 1);

        let events = t.events().await;
        assert_eq!(
            events[3].message, "nothing happened here",
            "the store reads the changed row"
        );
        let report = verify_chain(&events);
        assert_eq!(
            report.problem.as_deref(),
            Some("event 4 was changed after it was written")
        );
        assert_eq!(report.checked, 3, "the events before it are intact");
    }

    async fn a_row_whose_hash_was_recomputed_breaks_the_next_link() {
        let t = store_with_history().await;
        let mut event = t.events().await.remove(3);
        event.message = "nothing happened here".into();
        event.hash = event.compute_hash();
        let mut raw = t.raw().await;
        t.drop_append_only_guard(&mut raw, "update").await;
        sqlx::query("UPDATE events SET message = $1, hash = $2 WHERE id = 4")
            .bind(&event.message)
            .bind(&event.hash)
            .execute(&mut raw)
            .await
            .unwrap();

        let report = verify_chain(&t.events().await);
        assert_eq!(
            report.problem.as_deref(),
            Some("event 5 does not follow event 4: the log was changed or reordered")
        );
        assert_eq!(report.checked, 4);
    }

    async fn a_deleted_row_is_reported() {
        let t = store_with_history().await;
        let mut raw = t.raw().await;
        t.drop_append_only_guard(&mut raw, "delete").await;
        sqlx::query("DELETE FROM events WHERE id = 2")
            .execute(&mut raw)
            .await
            .unwrap();

        let report = verify_chain(&t.events().await);
        assert_eq!(
            report.problem.as_deref(),
            Some("event 2 is missing (found 3 in its place)")
        );
        assert_eq!(report.checked, 1);
    }

    async fn the_database_refuses_to_update_or_delete_events() {
        let t = store_with_history().await;
        let before = t.events().await;
        let mut raw = t.raw().await;

        let update = sqlx::query("UPDATE events SET message = 'rewritten' WHERE id = 1")
            .execute(&mut raw)
            .await
            .unwrap_err();
        assert!(
            update.to_string().contains("the event log is append-only"),
            "{update}"
        );
        let delete = sqlx::query("DELETE FROM events WHERE id = 1")
            .execute(&mut raw)
            .await
            .unwrap_err();
        assert!(
            delete.to_string().contains("the event log is append-only"),
            "{delete}"
        );
        let delete_all = sqlx::query("DELETE FROM events")
            .execute(&mut raw)
            .await
            .unwrap_err();
        assert!(
            delete_all
                .to_string()
                .contains("the event log is append-only"),
            "{delete_all}"
        );

        let after = t.events().await;
        assert_eq!(after, before, "every event is still there, unchanged");
        assert_eq!(verify_chain(&after).problem, None);
    }

    async fn subscribers_receive_each_committed_event() {
        let t = TestStore::open().await;
        let mut events = t.store.subscribe();
        t.register("1.0.0", &digest(1)).await;
        let received = events.recv().await.unwrap();
        assert_eq!(received, t.events().await[0]);
        assert_eq!(received.kind.to_string(), "release.created");

        // A refused change publishes nothing.
        let _ = t
            .store
            .insert_release(crate::fixtures::new_release("1.0.0", &digest(2)), "ci")
            .await
            .unwrap_err();
        assert!(matches!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ));
    }
}
