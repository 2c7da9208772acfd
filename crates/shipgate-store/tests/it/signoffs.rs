//! User acceptance sign-off as the store keeps it: the sheet is asked for only of a verifying
//! promotion and fixed then, each person signs a scenario once and only while it signs off,
//! every change has its event in the chain, and the wait's end is kept for DORA.

use shipgate_core::signoff::{SignoffEntry, SignoffVerdict};
use shipgate_core::{EventKind, PromotionState, Role};
use shipgate_store::{LiveChange, NewSignoff, NewSignoffRequest, Store, StoreError, verify_chain};

use crate::fixtures::{TestStore, digest};

fn entry(scenario: &str, by: &str, verdict: SignoffVerdict) -> SignoffEntry {
    SignoffEntry {
        scenario: scenario.into(),
        by: by.into(),
        token: format!("{by}-token"),
        verdict,
        note: Some("seen".into()),
        at: jiff::Timestamp::now(),
    }
}

on_both_backends! {
    async fn a_sheet_is_kept_with_each_signature_once_and_its_events() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        let p = t.request("1.0.0", &digest(1), "uat").await;
        let ask = NewSignoffRequest {
            promotion_id: p.id,
            role: Role::Tester,
            scenarios: vec!["checkout".into(), "invoice".into()],
            actor: "shipgate".into(),
            message: "waits for its sign-off".into(),
        };
        // Only a verifying promotion is asked for one.
        let early = t.store.request_signoff(ask.clone()).await.unwrap_err();
        assert!(matches!(early, StoreError::StateConflict { .. }), "{early}");
        let p = t.step(&p, PromotionState::Deploying, LiveChange::Keep).await;
        let p = t.step(&p, PromotionState::Verifying, LiveChange::Promoted).await;
        let signing = t.store.request_signoff(ask).await.unwrap();
        assert_eq!(signing.state, PromotionState::SigningOff);
        let sign = |scenario: &str, by: &str| NewSignoff {
            promotion_id: p.id,
            entry: entry(scenario, by, SignoffVerdict::Pass),
        };
        t.store.record_signoff(sign("checkout", "tess")).await.unwrap();
        let twice = t.store.record_signoff(sign("checkout", "tess")).await.unwrap_err();
        assert!(matches!(twice, StoreError::Conflict(_)), "{twice}");
        t.store.record_signoff(sign("checkout", "tom")).await.unwrap();
        let sheet = t.store.signoff_sheet(p.id).await.unwrap().unwrap();
        assert_eq!(sheet.role, Role::Tester);
        assert_eq!(sheet.scenarios, ["checkout", "invoice"]);
        let by: Vec<&str> = sheet.entries.iter().map(|e| e.by.as_str()).collect();
        assert_eq!(by, ["tess", "tom"]);
        assert_eq!(sheet.entries[0].token, "tess-token");
        // Once it ended, nobody signs.
        t.step(&signing, PromotionState::Succeeded, LiveChange::Keep).await;
        let late = t.store.record_signoff(sign("invoice", "ann")).await.unwrap_err();
        assert!(matches!(late, StoreError::StateConflict { .. }), "{late}");
        let kinds: Vec<EventKind> = t.events().await.iter().map(|e| e.kind).collect();
        for kind in [
            EventKind::Promotion(PromotionState::SigningOff),
            EventKind::SignoffRequested,
            EventKind::SignoffPassed,
        ] {
            assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
        }
        assert_eq!(verify_chain(&t.events().await).problem, None);
        // DORA sees how long 1.0.0 waited.
        let changes = t
            .store
            .dora_changes(jiff::Timestamp::UNIX_EPOCH, None)
            .await
            .unwrap();
        let uat = changes.iter().find(|c| c.env == "uat").unwrap();
        assert!(uat.signoff_secs.is_some_and(|s| s >= 0.0), "{uat:?}");
    }
}
