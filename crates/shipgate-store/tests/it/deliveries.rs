//! Notification deliveries: each target's first pending one (in event order) is the only one
//! offered, due or not, and the next comes once it is delivered or dead.

use shipgate_core::EventKind;
use shipgate_store::{AttemptOutcome, DeliveryAttempt, NewDelivery, NewEvent, Store};

use crate::fixtures::TestStore;

fn attempt() -> DeliveryAttempt {
    DeliveryAttempt {
        at: jiff::Timestamp::now(),
        status: Some(500),
        error: Some("the receiver answered 500".into()),
        took_ms: 1,
    }
}

on_both_backends! {
    async fn a_targets_deliveries_are_offered_one_at_a_time_in_event_order() {
        let t = TestStore::open().await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let e = t.store.append_event(NewEvent {
                actor: "alice".into(),
                kind: EventKind::NotifyTest,
                app: None,
                env: None,
                promotion_id: None,
                message: format!("test {i}"),
                data: serde_json::json!({}),
            }).await.unwrap();
            ids.push(e.id);
        }
        let deliveries = ids.iter().rev().flat_map(|id| {
            ["ops", "chat"].map(|target| NewDelivery {
                target: target.into(),
                event_id: *id,
                webhook_id: format!("msg_{target}_{id}"),
            })
        }).collect();
        t.store.fan_out(&ids, deliveries).await.unwrap();
        let first = |target: &'static str| {
            let store = &t.store;
            async move {
                store.first_pending_deliveries().await.unwrap().into_iter()
                    .find(|d| d.target == target)
            }
        };
        let offered = t.store.first_pending_deliveries().await.unwrap();
        assert_eq!(offered.len(), 2, "one per target: {offered:?}");
        assert!(offered.iter().all(|d| d.event_id == ids[0]), "{offered:?}");

        // Backing off, it stays first (not due yet): the ones after it wait.
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let ops = first("ops").await.unwrap();
        t.store.record_attempt(ops.id, attempt(), AttemptOutcome::Retry { next_at: later }).await.unwrap();
        let ops = first("ops").await.unwrap();
        assert_eq!((ops.event_id, ops.attempts), (ids[0], 1));
        assert_eq!(ops.next_at.as_second(), later.as_second());

        // Delivered, or dead, lets the next go.
        t.store.record_attempt(ops.id, attempt(), AttemptOutcome::Delivered).await.unwrap();
        assert_eq!(first("ops").await.unwrap().event_id, ids[1]);
        let ops = first("ops").await.unwrap();
        t.store.record_attempt(ops.id, attempt(), AttemptOutcome::Dead).await.unwrap();
        assert_eq!(first("ops").await.unwrap().event_id, ids[2]);
        assert_eq!(first("chat").await.unwrap().event_id, ids[0], "each target on its own");
        let ops = first("ops").await.unwrap();
        t.store.record_attempt(ops.id, attempt(), AttemptOutcome::Delivered).await.unwrap();
        assert!(first("ops").await.is_none(), "nothing left for ops");
    }
}
