//! Flag changes that wait for approvals: recorded with their event, decided on one at a time
//! (a decision made on a stale reading is refused), applied together with the flag states in
//! one transaction, and overtaken by a kill switch.

use shipgate_core::flag::FlagState;
use shipgate_core::gate::Decision;
use shipgate_core::{EventKind, Role, Verdict};
use shipgate_store::{FlagChange, FlagChangeStatus, FlagDecision, NewEvent, Store, StoreError};

use crate::fixtures::{TestStore, app, env_of};

fn event(kind: EventKind, actor: &str) -> NewEvent {
    NewEvent {
        actor: actor.into(),
        kind,
        app: Some("web".into()),
        env: Some("production".into()),
        promotion_id: None,
        message: format!("{kind} by {actor}"),
        data: serde_json::json!({}),
    }
}

fn on(flag: &str) -> FlagChange {
    FlagChange {
        flag: flag.into(),
        before: FlagState::Off,
        after: FlagState::On {
            variant: "on".into(),
        },
    }
}

fn approval(actor: &str) -> Decision {
    Decision {
        actor: actor.into(),
        role: Role::Approver,
        verdict: Verdict::Approve,
        comment: None,
        at: jiff::Timestamp::now(),
    }
}

on_both_backends! {
    async fn flag_changes_wait_are_decided_once_each_and_apply_with_their_states() {
        let t = TestStore::open().await;
        let prod = env_of("production");
        let first = t.store.request_flag_change(&prod, &app(), &[on("a"), on("b")], event(EventKind::FlagChangeRequested, "dana")).await.unwrap();
        let second = t.store.request_flag_change(&prod, &app(), &[on("c")], event(EventKind::FlagChangeRequested, "dana")).await.unwrap();
        assert_eq!((first.id, second.id), (1, 2));
        assert_eq!(t.store.flag_changes(Some(&prod), true).await.unwrap().len(), 2);
        assert!(t.store.flag_changes(Some(&env_of("staging")), true).await.unwrap().is_empty());

        // One approval of two: still pending, nothing set.
        let half = t.store.decide_flag_change(FlagDecision { id: 1, decided_before: 0, decision: approval("alice"), close: None }, vec![event(EventKind::FlagChangeApproved, "alice")]).await.unwrap();
        assert_eq!(half.status, FlagChangeStatus::Pending);
        assert!(t.store.flags(Some(&prod)).await.unwrap().is_empty());
        // A decision made on the reading before alice's is refused.
        let stale = t.store.decide_flag_change(FlagDecision { id: 1, decided_before: 0, decision: approval("bob"), close: Some(FlagChangeStatus::Applied) }, vec![]).await.unwrap_err();
        assert!(matches!(&stale, StoreError::Conflict(m) if m.contains("decided on meanwhile")), "{stale}");
        // The second approval applies both flags at once.
        let done = t.store.decide_flag_change(FlagDecision { id: 1, decided_before: 1, decision: approval("bob"), close: Some(FlagChangeStatus::Applied) }, vec![event(EventKind::FlagChangeApproved, "bob"), event(EventKind::FlagChanged, "bob")]).await.unwrap();
        assert_eq!(done.status, FlagChangeStatus::Applied);
        assert!(done.closed_at.is_some());
        let states = t.store.flags(Some(&prod)).await.unwrap();
        assert_eq!(states.iter().map(|r| r.flag.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(states.iter().all(|r| r.changed_by == "bob" && r.state != FlagState::Off));
        let shown = t.store.flag_change(1).await.unwrap().unwrap();
        assert_eq!(shown.decisions.iter().map(|d| d.actor.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        let closed = t.store.decide_flag_change(FlagDecision { id: 1, decided_before: 2, decision: approval("carol"), close: None }, vec![]).await.unwrap_err();
        assert!(matches!(&closed, StoreError::Conflict(m) if m.contains("is applied now")), "{closed}");

        // A kill switch overtakes the change still waiting, in the same transaction.
        t.store.set_flags(&prod, &app(), &[("c".into(), FlagState::Off)], "dana", &[2], event(EventKind::FlagChanged, "dana")).await.unwrap();
        assert_eq!(t.store.flag_change(2).await.unwrap().unwrap().status, FlagChangeStatus::Superseded);
        assert!(t.store.flag_changes(None, true).await.unwrap().is_empty());
        assert_eq!(t.store.flag_changes(None, false).await.unwrap().len(), 2);
        let missing = t.store.decide_flag_change(FlagDecision { id: 9, decided_before: 0, decision: approval("bob"), close: None }, vec![]).await.unwrap_err();
        assert!(matches!(missing, StoreError::NotFound(_)));

        let kinds: Vec<EventKind> = t.events().await.into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::FlagChangeRequested, EventKind::FlagChangeRequested, EventKind::FlagChangeApproved, EventKind::FlagChangeApproved, EventKind::FlagChanged, EventKind::FlagChanged]);
    }
}
