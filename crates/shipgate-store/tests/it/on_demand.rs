//! On-demand environments' rows: recorded with their event, refused when a name or port is
//! taken, updated, and removed together with what is live in them.

use shipgate_core::on_demand::OnDemandState;
use shipgate_core::{EventKind, ReleaseRef};
use shipgate_store::{NewEvent, OnDemandRecord, Store, StoreError};

use crate::fixtures::{TestStore, digest, env_of};

fn record(name: &str, port: u16) -> OnDemandRecord {
    let now = jiff::Timestamp::now();
    OnDemandRecord {
        name: env_of(name),
        template: env_of("preview"),
        requester: "alice".into(),
        port,
        state: OnDemandState::Creating,
        ttl_secs: 3600,
        created_at: now,
        expires_at: now + jiff::SignedDuration::from_hours(1),
        releases: vec![ReleaseRef::parse("web@1.0.0").unwrap()],
        outcome: None,
    }
}

fn event(kind: EventKind, env: &str) -> NewEvent {
    NewEvent {
        actor: "alice".into(),
        kind,
        app: None,
        env: Some(env.into()),
        promotion_id: None,
        message: format!("{kind} {env}"),
        data: serde_json::json!({}),
    }
}

on_both_backends! {
    async fn on_demand_rows_live_with_their_events_and_go_with_what_is_live_in_them() {
        let t = TestStore::open().await;
        let made = t.store.insert_on_demand(record("pr-1", 9100), event(EventKind::EnvironmentCreated, "pr-1")).await.unwrap();
        let twice = t.store.insert_on_demand(record("pr-1", 9101), event(EventKind::EnvironmentCreated, "pr-1")).await.unwrap_err();
        assert!(matches!(&twice, StoreError::Conflict(m) if m.contains("exists already")), "{twice}");
        let port = t.store.insert_on_demand(record("pr-2", 9100), event(EventKind::EnvironmentCreated, "pr-2")).await.unwrap_err();
        assert!(matches!(&port, StoreError::Conflict(m) if m.contains("port 9100 is held by")), "{port}");
        let mut ready = made.clone();
        ready.state = OnDemandState::Ready;
        ready.outcome = Some("web@1.0.0 deployed and verified".into());
        t.store.update_on_demand(&ready, OnDemandState::Creating, Some(event(EventKind::EnvironmentReady, "pr-1"))).await.unwrap();
        let stale = t.store.update_on_demand(&ready, OnDemandState::Creating, None).await.unwrap_err();
        assert!(matches!(&stale, StoreError::Conflict(m) if m.contains("no longer creating")), "{stale}");
        assert!(!t.store.begin_deleting(&env_of("pr-1"), Some((OnDemandState::Creating, made.expires_at))).await.unwrap(), "a reaper that read it creating leaves it");
        let later = made.expires_at + jiff::SignedDuration::from_hours(2);
        t.store.touch_on_demand(&env_of("pr-1"), later).await.unwrap();
        let rows = t.store.on_demand().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, OnDemandState::Ready);
        assert_eq!(rows[0].releases, made.releases);
        assert_eq!(rows[0].expires_at.as_second(), later.as_second());

        t.register("1.0.0", &digest(1)).await;
        let p = t.request("1.0.0", &digest(1), "pr-1").await;
        t.succeed(&p).await;
        assert_eq!(t.store.live(None).await.unwrap().len(), 1);
        t.store.delete_on_demand(&env_of("pr-1"), event(EventKind::EnvironmentDeleted, "pr-1")).await.unwrap();
        assert!(t.store.on_demand().await.unwrap().is_empty());
        assert!(t.store.live(None).await.unwrap().is_empty(), "nothing stays live in it");
        let kinds: Vec<EventKind> = t.events().await.iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&EventKind::EnvironmentCreated) && kinds.contains(&EventKind::EnvironmentReady) && kinds.contains(&EventKind::EnvironmentDeleted), "{kinds:?}");
        let gone = t.store.update_on_demand(&ready, OnDemandState::Ready, None).await.unwrap_err();
        assert!(matches!(gone, StoreError::Conflict(_)));
        assert!(!t.store.begin_deleting(&env_of("pr-1"), None).await.unwrap(), "gone");
    }
}
