//! Promotions: supersession of pending requests, refused transitions, what is live, and which
//! digest counts as verified.

use shipgate_core::{PromotionKind, PromotionState};
use shipgate_store::{LiveChange, PromotionFilter, Store, StoreError};

use crate::fixtures::{TestStore, app, digest, env_of, transition, version_of};

on_both_backends! {
    async fn a_newer_request_supersedes_a_pending_one() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        t.register("1.1.0", &digest(2)).await;
        let old = t.request("1.0.0", &digest(1), "development").await;
        let elsewhere = t.request("1.0.0", &digest(1), "testing").await;
        assert_eq!(old.state, PromotionState::Pending);

        let new = t.request("1.1.0", &digest(2), "development").await;
        assert_eq!(new.state, PromotionState::Pending);

        let old = t.store.promotion(old.id).await.unwrap().unwrap();
        assert_eq!(old.state, PromotionState::Superseded);
        let reason = old.reason.unwrap();
        assert!(
            reason.contains(&format!("superseded by promotion {}", new.id)),
            "{reason}"
        );
        assert!(reason.contains("web@1.1.0"), "{reason}");
        let elsewhere = t.store.promotion(elsewhere.id).await.unwrap().unwrap();
        assert_eq!(
            elsewhere.state,
            PromotionState::Pending,
            "another environment's request is left alone"
        );

        let events = t.events().await;
        let superseded: Vec<_> = events
            .iter()
            .filter(|e| e.kind.to_string() == "promotion.superseded")
            .collect();
        assert_eq!(superseded.len(), 1, "{events:#?}");
        assert_eq!(superseded[0].promotion_id, Some(old.id));
        assert_eq!(superseded[0].actor, "alice");
        assert_eq!(superseded[0].data["by"], new.id.0);
        // The supersession and the new request are one transaction: the new request's event follows.
        let requested = events
            .iter()
            .find(|e| e.kind.to_string() == "promotion.requested" && e.promotion_id == Some(new.id))
            .unwrap();
        assert_eq!(requested.id, superseded[0].id + 1);
    }

    async fn a_promotion_past_pending_is_not_superseded() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        t.register("1.1.0", &digest(2)).await;
        let deploying = t.request("1.0.0", &digest(1), "development").await;
        t.step(&deploying, PromotionState::Deploying, LiveChange::Keep)
            .await;
        t.request("1.1.0", &digest(2), "development").await;
        let deploying = t.store.promotion(deploying.id).await.unwrap().unwrap();
        assert_eq!(deploying.state, PromotionState::Deploying);
    }

    async fn a_transition_from_a_wrong_state_is_refused_and_writes_nothing() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        let p = t.request("1.0.0", &digest(1), "development").await;
        t.step(&p, PromotionState::Deploying, LiveChange::Keep)
            .await;
        let events_before = t.events().await.len();

        // Someone else moved it first: it is no longer pending.
        let again = transition(
            p.id,
            &[PromotionState::Pending],
            PromotionState::Deploying,
            LiveChange::Keep,
        );
        let err = t.store.transition(again).await.unwrap_err();
        match &err {
            StoreError::StateConflict {
                id,
                expected,
                actual,
            } => {
                assert_eq!(*id, p.id);
                assert_eq!(expected, "pending");
                assert_eq!(*actual, PromotionState::Deploying);
            }
            other => panic!("expected StateConflict, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!("promotion {} is deploying, not pending", p.id)
        );

        // In `from`, but the state machine does not allow the move: refused the same way, and the
        // live change asked for is not applied either.
        let skip = transition(
            p.id,
            &[PromotionState::Deploying],
            PromotionState::Succeeded,
            LiveChange::Promoted,
        );
        assert!(matches!(
            t.store.transition(skip).await,
            Err(StoreError::StateConflict { .. })
        ));

        assert_eq!(
            t.events().await.len(),
            events_before,
            "a refused transition writes no event"
        );
        assert_eq!(
            t.store.promotion(p.id).await.unwrap().unwrap().state,
            PromotionState::Deploying
        );
        assert!(
            t.store.live(None).await.unwrap().is_empty(),
            "nothing went live"
        );
    }

    async fn a_transition_of_an_unknown_promotion_is_not_found() {
        let t = TestStore::open().await;
        let err = t
            .store
            .transition(transition(
                shipgate_core::PromotionId(42),
                &[PromotionState::Pending],
                PromotionState::Deploying,
                LiveChange::Keep,
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        assert!(t.events().await.is_empty());
    }

    async fn each_transition_records_its_event() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        let p = t.request("1.0.0", &digest(1), "development").await;
        t.succeed(&p).await;
        let kinds: Vec<String> = t
            .events()
            .await
            .into_iter()
            .filter(|e| e.promotion_id == Some(p.id))
            .map(|e| e.kind.to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "promotion.requested",
                "promotion.deploying",
                "promotion.verifying",
                "promotion.succeeded"
            ]
        );
    }

    async fn promoted_and_restore_change_what_is_live() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        t.register("1.1.0", &digest(2)).await;
        let dev = env_of("development");

        let first = t.request("1.0.0", &digest(1), "development").await;
        t.step(&first, PromotionState::Deploying, LiveChange::Keep)
            .await;
        assert!(
            t.store.live(None).await.unwrap().is_empty(),
            "deploying does not make it live"
        );
        t.step(&first, PromotionState::Verifying, LiveChange::Promoted)
            .await;
        let live = t.store.live(Some(&app())).await.unwrap();
        assert_eq!(live.len(), 1);
        let first_live = live[0].clone();
        assert_eq!(
            (
                first_live.env.clone(),
                first_live.version.as_str(),
                &first_live.digest,
                first_live.promotion_id
            ),
            (dev.clone(), "1.0.0", &digest(1), first.id)
        );
        t.step(&first, PromotionState::Succeeded, LiveChange::Keep)
            .await;

        // A second release goes live, fails verification and gives the environment back.
        let second = t.request("1.1.0", &digest(2), "development").await;
        t.step(&second, PromotionState::Deploying, LiveChange::Keep)
            .await;
        t.step(&second, PromotionState::Verifying, LiveChange::Promoted)
            .await;
        assert_eq!(
            t.store.live(None).await.unwrap()[0].version.as_str(),
            "1.1.0"
        );
        t.step(
            &second,
            PromotionState::Failed,
            LiveChange::Restore(Some(first_live.clone())),
        )
        .await;
        assert_eq!(
            t.store.live(None).await.unwrap(),
            vec![first_live.clone()],
            "the same live record is back, `since` included"
        );

        // In an environment that had nothing, a failure leaves nothing live.
        let testing = t.request("1.1.0", &digest(2), "testing").await;
        t.step(&testing, PromotionState::Deploying, LiveChange::Keep)
            .await;
        t.step(&testing, PromotionState::Verifying, LiveChange::Promoted)
            .await;
        assert_eq!(t.store.live(None).await.unwrap().len(), 2);
        t.step(&testing, PromotionState::Failed, LiveChange::Restore(None))
            .await;
        assert_eq!(
            t.store.live(None).await.unwrap(),
            vec![first_live],
            "testing is empty again, development untouched"
        );
    }

    async fn a_digest_is_verified_only_after_its_promotion_succeeded() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        let (v, dev, testing) = (
            version_of("1.0.0"),
            env_of("development"),
            env_of("testing"),
        );
        let verified = || async {
            t.store
                .standing(&app(), &v, &dev)
                .await
                .unwrap()
                .verified()
                .cloned()
        };

        let p = t.request("1.0.0", &digest(1), "development").await;
        assert_eq!(verified().await, None, "pending");
        t.step(&p, PromotionState::Deploying, LiveChange::Keep)
            .await;
        assert_eq!(verified().await, None, "deploying");
        t.step(&p, PromotionState::Verifying, LiveChange::Promoted)
            .await;
        assert_eq!(verified().await, None, "verifying, though live");
        t.step(&p, PromotionState::Succeeded, LiveChange::Keep)
            .await;
        assert_eq!(verified().await, Some(digest(1)));
        assert_eq!(
            t.store
                .standing(&app(), &v, &testing)
                .await
                .unwrap()
                .verified()
                .cloned(),
            None,
            "only in the environment it passed"
        );

        let failed = t.request("1.0.0", &digest(1), "testing").await;
        t.step(&failed, PromotionState::Deploying, LiveChange::Keep)
            .await;
        t.step(&failed, PromotionState::Failed, LiveChange::Keep)
            .await;
        assert_eq!(
            t.store
                .standing(&app(), &v, &testing)
                .await
                .unwrap()
                .verified()
                .cloned(),
            None,
            "a failed promotion verifies nothing"
        );
    }

    async fn a_rollback_marks_the_replaced_promotion_rolled_back() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        t.register("1.1.0", &digest(2)).await;
        t.succeed(&t.request("1.0.0", &digest(1), "production").await)
            .await;
        let replaced = t
            .succeed(&t.request("1.1.0", &digest(2), "production").await)
            .await;

        let back = t
            .request_kind("1.0.0", &digest(1), "production", PromotionKind::Rollback)
            .await;
        assert_eq!(back.kind, PromotionKind::Rollback);
        t.step(&back, PromotionState::Deploying, LiveChange::Keep)
            .await;
        t.step(&back, PromotionState::Verifying, LiveChange::Promoted)
            .await;
        let mut done = transition(
            back.id,
            &[PromotionState::Verifying],
            PromotionState::Succeeded,
            LiveChange::Keep,
        );
        done.roll_back_promotion = Some(replaced.id);
        t.store.transition(done).await.unwrap();

        let replaced = t.store.promotion(replaced.id).await.unwrap().unwrap();
        assert_eq!(replaced.state, PromotionState::RolledBack);
        assert_eq!(
            replaced.reason.as_deref(),
            Some(format!("rolled back by promotion {}", back.id).as_str())
        );
        let live = t.store.live(None).await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(
            (live[0].version.as_str(), live[0].promotion_id),
            ("1.0.0", back.id)
        );
        let last = t.events().await.pop().unwrap();
        assert_eq!(
            (last.kind.to_string(), last.promotion_id),
            ("promotion.rolled_back".to_owned(), Some(replaced.id))
        );

        let filter = PromotionFilter {
            env: Some(env_of("production")),
            version: None,
            apps: Vec::new(),
            states: vec![PromotionState::Succeeded],
            ..Default::default()
        };
        let succeeded: Vec<shipgate_core::PromotionId> = t
            .store
            .promotions(filter)
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(
            succeeded.len(),
            2,
            "the first promotion and the rollback: {succeeded:?}"
        );
        let v110 = shipgate_core::Version::parse("1.1.0").unwrap();
        assert_eq!(
            t.store
                .standing(&app(), &v110, &env_of("production"))
                .await
                .unwrap(),
            shipgate_core::Standing::RolledBack(digest(2)),
            "a rolled-back release no longer counts as verified there"
        );
    }

    async fn a_rollback_goes_to_the_newest_other_release_that_succeeded_before_the_live_one() {
        let t = TestStore::open().await;
        for (n, v) in ["1.0.0", "1.1.0", "1.2.0"].iter().enumerate() {
            t.register(v, &digest(n as u8 + 1)).await;
        }
        assert_eq!(t.store.rollback_targets(&[app()]).await.unwrap(), Vec::new(), "nothing live");
        let first = t.request("1.0.0", &digest(1), "development").await;
        let first = t.succeed(&first).await;
        assert_eq!(t.store.rollback_targets(&[app()]).await.unwrap(), Vec::new(), "nothing before");
        // 1.1.0 failed, 1.0.0 again (same version: no target), then 1.2.0 went live.
        let failed = t.request("1.1.0", &digest(2), "development").await;
        t.step(&failed, PromotionState::Deploying, LiveChange::Keep).await;
        t.step(&failed, PromotionState::Failed, LiveChange::Keep).await;
        let again = t.request("1.0.0", &digest(1), "development").await;
        let again = t.succeed(&again).await;
        let newest = t.request("1.2.0", &digest(3), "development").await;
        t.succeed(&newest).await;
        let targets = t.store.rollback_targets(&[app()]).await.unwrap();
        assert_eq!(targets, vec![again.clone()], "not the failed one, the newest that succeeded");
        assert_ne!(targets[0].id, first.id);
        // Another app's name asks for nothing of this one.
        let other = shipgate_core::AppName::parse("api").unwrap();
        assert_eq!(t.store.rollback_targets(&[other]).await.unwrap(), Vec::new());
    }
}
