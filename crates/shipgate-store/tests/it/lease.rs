//! The engine's lease: one holder at a time, a new epoch each time it changes hands, and a
//! fenced store that writes nothing once another holder took its lease, refused by the
//! database itself.

use std::time::Duration;

use shipgate_store::{Store, StoreError};

use crate::fixtures::{TestStore, digest, new_release};

const SHORT: Duration = Duration::from_millis(400);

/// Waits until a lease of length [`SHORT`] taken before this call has surely ended.
async fn past_short_lease() {
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
}

on_both_backends! {
    async fn one_holder_at_a_time_and_a_new_epoch_when_it_changes_hands() {
        let t = TestStore::open().await;
        assert_eq!(t.store.lease().await.unwrap(), None, "nobody has led yet");
        let a = t.store.acquire_lease("a", "http://a", SHORT).await.unwrap().unwrap();
        assert_eq!((a.holder.as_str(), a.address.as_str(), a.epoch), ("a", "http://a", 1));
        assert_eq!(
            t.store.acquire_lease("b", "http://b", SHORT).await.unwrap(),
            None,
            "b cannot take a lease that runs"
        );
        let renewed = t.store.renew_lease(&a, SHORT).await.unwrap().unwrap();
        assert_eq!(renewed.epoch, 1, "renewing keeps the epoch");
        assert!(renewed.expires_at >= a.expires_at);
        assert_eq!(t.store.lease().await.unwrap().unwrap().holder, "a");

        past_short_lease().await;
        let b = t.store.acquire_lease("b", "http://b", SHORT).await.unwrap().unwrap();
        assert_eq!((b.holder.as_str(), b.epoch), ("b", 2));
        assert_eq!(
            t.store.renew_lease(&a, SHORT).await.unwrap(),
            None,
            "a's lease was lost: it is not renewed"
        );
        let led = t.store.lease().await.unwrap().unwrap();
        assert_eq!((led.holder.as_str(), led.address.as_str(), led.epoch), ("b", "http://b", 2));
    }

    async fn an_expired_lease_nobody_took_is_renewed_under_its_epoch() {
        let t = TestStore::open().await;
        let a = t.store.acquire_lease("a", "http://a", SHORT).await.unwrap().unwrap();
        past_short_lease().await;
        // Late (a renewal held up behind a long write), but nobody led meanwhile.
        let renewed = t.store.renew_lease(&a, SHORT).await.unwrap().unwrap();
        assert_eq!(renewed.epoch, 1);
        assert_eq!(
            t.store.acquire_lease("b", "http://b", SHORT).await.unwrap(),
            None,
            "renewed, it runs again"
        );
    }

    async fn a_released_lease_is_taken_over_at_once() {
        let t = TestStore::open().await;
        let a = t.store.acquire_lease("a", "http://a", Duration::from_secs(60)).await.unwrap().unwrap();
        t.store.release_lease(&a).await.unwrap();
        let b = t.store.acquire_lease("b", "http://b", SHORT).await.unwrap().unwrap();
        assert_eq!(b.epoch, 2);
    }

    async fn a_fenced_store_writes_nothing_once_its_lease_was_taken_over() {
        let t = TestStore::open().await;
        let a = t.store.acquire_lease("a", "http://a", SHORT).await.unwrap().unwrap();
        let fenced = t.store.fenced(a.clone());
        fenced.insert_release(new_release("1.0.0", &digest(1)), "ci").await.unwrap();
        assert_eq!(t.events().await.len(), 1, "a write under a live lease is kept");

        // Expired, and another server took it: the old lease's store is refused every write.
        past_short_lease().await;
        let b = t.store.acquire_lease("b", "http://b", Duration::from_secs(60)).await.unwrap().unwrap();
        let refused = fenced
            .insert_release(new_release("1.1.0", &digest(2)), "ci")
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::Fenced { epoch: 1, .. }), "{refused}");
        let refused = fenced.freeze(None, "late", "a").await.unwrap_err();
        assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
        assert!(
            refused.to_string().contains("another server leads now, so nothing was written"),
            "{refused}"
        );
        assert_eq!(t.events().await.len(), 1, "nothing of the refused writes was recorded");
        assert_eq!(t.store.releases(None).await.unwrap().len(), 1);

        // The new leader's fenced store writes, and the unfenced store (the API) always does.
        t.store.fenced(b).insert_release(new_release("1.1.0", &digest(2)), "ci").await.unwrap();
        t.store.freeze(None, "maintenance", "alice").await.unwrap();
        assert_eq!(t.events().await.len(), 3);
    }
}
