//! Approvals, rejections and freezes as the store keeps them: one decision per person and
//! stage, decisions only on a promotion in the matching state, one freeze per scope, and
//! every change with its event in the chain.

use shipgate_core::gate::Stage;
use shipgate_core::{PromotionState, Role, Verdict};
use shipgate_store::{LiveChange, NewDecision, Store, StoreError, verify_chain};

use crate::fixtures::{TestStore, digest, env_of};

fn decision(
    promotion_id: shipgate_core::PromotionId,
    actor: &str,
    stage: Stage,
    verdict: Verdict,
) -> NewDecision {
    NewDecision {
        promotion_id,
        stage,
        actor: actor.into(),
        role: Role::Approver,
        verdict,
        comment: (verdict == Verdict::Reject).then(|| "no".to_owned()),
    }
}

on_both_backends! {
    async fn each_person_decides_once_and_only_while_the_promotion_waits() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        let p = t.request("1.0.0", &digest(1), "production").await;
        t.store
            .record_decision(decision(p.id, "bob", Stage::Entry, Verdict::Approve))
            .await
            .unwrap();
        let again = t
            .store
            .record_decision(decision(p.id, "bob", Stage::Entry, Verdict::Reject))
            .await
            .unwrap_err();
        assert!(matches!(again, StoreError::Conflict(_)), "{again}");
        assert_eq!(
            again.to_string(),
            format!(
                "bob has already decided on promotion {}; each person decides once",
                p.id
            )
        );
        // A watch decision needs a verifying promotion.
        let early = t
            .store
            .record_decision(decision(p.id, "eve", Stage::Watch, Verdict::Approve))
            .await
            .unwrap_err();
        assert!(matches!(early, StoreError::StateConflict { .. }), "{early}");
        t.store
            .record_decision(decision(p.id, "eve", Stage::Entry, Verdict::Reject))
            .await
            .unwrap();
        let decisions = t.store.decisions(p.id, Stage::Entry).await.unwrap();
        let who: Vec<(&str, Verdict)> = decisions
            .iter()
            .map(|d| (d.actor.as_str(), d.verdict))
            .collect();
        assert_eq!(who, [("bob", Verdict::Approve), ("eve", Verdict::Reject)]);
        assert!(
            t.store
                .decisions(p.id, Stage::Watch)
                .await
                .unwrap()
                .is_empty()
        );

        // Once it deploys, an entry decision is refused: nothing is written.
        t.step(&p, PromotionState::Deploying, LiveChange::Keep)
            .await;
        let late = t
            .store
            .record_decision(decision(p.id, "carol", Stage::Entry, Verdict::Approve))
            .await
            .unwrap_err();
        assert!(matches!(late, StoreError::StateConflict { .. }), "{late}");
        assert_eq!(
            t.store.decisions(p.id, Stage::Entry).await.unwrap().len(),
            2
        );

        let events = t.events().await;
        let kinds: Vec<String> = events
            .iter()
            .filter(|e| e.kind.family() == "approval")
            .map(|e| e.kind.to_string())
            .collect();
        assert_eq!(kinds, ["approval.approved", "approval.rejected"]);
        assert_eq!(verify_chain(&events).problem, None);
    }

    async fn one_freeze_per_scope_lifted_by_scope() {
        let t = TestStore::open().await;
        let prod = env_of("production");
        t.store
            .freeze(Some(&prod), "year-end", "alice")
            .await
            .unwrap();
        let twice = t
            .store
            .freeze(Some(&prod), "again", "bob")
            .await
            .unwrap_err();
        assert_eq!(
            twice.to_string(),
            "production is already frozen by alice: year-end (unfreeze it first to change the reason)"
        );
        t.store.freeze(None, "incident", "bob").await.unwrap();
        let freezes = t.store.freezes().await.unwrap();
        assert_eq!(freezes.len(), 2);
        assert_eq!(freezes[0].env.as_ref(), Some(&prod));
        assert_eq!(freezes[1].env, None);

        let lifted = t.store.unfreeze(None, "carol").await.unwrap();
        assert_eq!(lifted.reason, "incident");
        let left = t.store.freezes().await.unwrap();
        assert_eq!(
            left.len(),
            1,
            "lifting every-environment leaves production's own"
        );
        let none = t.store.unfreeze(None, "carol").await.unwrap_err();
        assert!(matches!(none, StoreError::NotFound(_)), "{none}");
        t.store.unfreeze(Some(&prod), "carol").await.unwrap();
        assert!(t.store.freezes().await.unwrap().is_empty());

        let events = t.events().await;
        let kinds: Vec<String> = events.iter().map(|e| e.kind.to_string()).collect();
        assert_eq!(
            kinds,
            [
                "environment.frozen",
                "environment.frozen",
                "environment.unfrozen",
                "environment.unfrozen"
            ]
        );
        assert_eq!(
            events[2].message,
            "carol lifted the freeze of every environment (frozen by bob: incident)"
        );
    }
}
