//! Secrets and sessions as the store keeps them: every version of a secret, sealed (the store
//! never sees a value), with its event; the versions a promotion's instances got; the key's id
//! claimed once; sessions that outlive the process that made them, and sign-ins taken once.

use shipgate_core::{EnvName, EventKind, Grant, Role};
use shipgate_store::seal::parse_key;
use shipgate_store::{DeployedSecret, NewSecret, SessionRecord, Store, verify_chain};

use crate::fixtures::{TestStore, digest};

fn production() -> EnvName {
    EnvName::parse("production").unwrap()
}

on_both_backends! {
    async fn every_version_of_a_secret_is_kept_sealed_with_its_event() {
        let t = TestStore::open().await;
        let key = parse_key(&"ab".repeat(32)).unwrap();
        assert_eq!(t.store.secrets_key_id().await.unwrap(), None);
        assert_eq!(t.store.claim_secrets_key(&key.id()).await.unwrap(), key.id());
        // The first key claimed stays the store's.
        assert_eq!(t.store.claim_secrets_key("other").await.unwrap(), key.id());
        let new = |version: i64, sealed: Option<Vec<u8>>| NewSecret {
            env: production(),
            name: "DB_PASSWORD".into(),
            version,
            sealed,
            key_id: key.id(),
            source: "shipgate secret set".into(),
        };
        let one = t
            .store
            .set_secret(new(1, Some(key.seal(b"hunter2-one", b"1"))), "ann")
            .await
            .unwrap();
        let two = t
            .store
            .set_secret(new(2, Some(key.seal(b"hunter2-two", b"2"))), "ann")
            .await
            .unwrap();
        // Two writers at once: the second, sealed under a number already taken, is refused whole.
        let late = t
            .store
            .set_secret(new(2, Some(key.seal(b"hunter2-late", b"2"))), "cy")
            .await
            .unwrap_err();
        assert!(matches!(late, shipgate_store::StoreError::Conflict(_)), "{late}");
        let gone = t.store.set_secret(new(3, None), "bob").await.unwrap();
        assert_eq!((one.version, two.version, gone.version), (1, 2, 3));
        let all = t.store.secrets(&production()).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(key.open(all[1].sealed.as_ref().unwrap(), b"2").unwrap(), b"hunter2-two");
        assert!(all[2].sealed.is_none(), "a removal is a version without a value");
        assert!(t.store.secrets(&EnvName::parse("staging").unwrap()).await.unwrap().is_empty());
        let events = t.events().await;
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&EventKind::SecretSet) && kinds.contains(&EventKind::SecretRemoved));
        assert!(events.iter().all(|e| !e.message.contains("hunter2") && !e.data.to_string().contains("hunter2")));
        assert_eq!(verify_chain(&events).problem, None);

        t.register("1.0.0", &digest(1)).await;
        let p = t.request("1.0.0", &digest(1), "production").await;
        let got = vec![DeployedSecret {
            var: "DB_PASSWORD".into(),
            env: production(),
            name: "DB_PASSWORD".into(),
            version: 2,
        }];
        t.store.record_deployed_secrets(p.id, &got).await.unwrap();
        t.store.record_deployed_secrets(p.id, &got).await.unwrap();
        assert_eq!(t.store.deployed_secrets(p.id).await.unwrap(), got);
    }

    async fn a_session_is_kept_until_it_ends_and_a_sign_in_is_taken_once() {
        let t = TestStore::open().await;
        let now = jiff::Timestamp::now();
        let grant = Grant {
            name: "ann@example.com".into(),
            role: Role::Deployer,
            envs: Vec::new(),
            person: Some("sub-ann".into()),
            also: vec![shipgate_core::Binding { role: Role::Approver, envs: Vec::new() }],
        };
        let session = SessionRecord {
            id_hash: "h1".into(),
            kind: "oidc".into(),
            token_hash: None,
            grant: grant.clone(),
            email: Some("ann@example.com".into()),
            sealed_refresh: Some(vec![1, 2, 3]),
            idp_expires_at: Some(now),
            csrf: "c".into(),
            created_at: now,
            expires_at: now + jiff::SignedDuration::from_hours(12),
        };
        t.store.insert_session(&session, None).await.unwrap();
        let kept = t.store.session("h1").await.unwrap().unwrap();
        assert_eq!(kept.grant, grant);
        assert_eq!(kept.sealed_refresh, Some(vec![1, 2, 3]));
        let fewer = Grant { also: Vec::new(), ..grant };
        t.store.refresh_session("h1", &fewer, None, None).await.unwrap();
        let kept = t.store.session("h1").await.unwrap().unwrap();
        assert_eq!((kept.grant, kept.sealed_refresh), (fewer, None));
        t.store.end_session("h1", None).await.unwrap();
        assert!(t.store.session("h1").await.unwrap().is_none());

        t.store.insert_sign_in("s1", "{}", now + jiff::SignedDuration::from_mins(10)).await.unwrap();
        assert_eq!(t.store.take_sign_in("s1").await.unwrap().as_deref(), Some("{}"));
        assert_eq!(t.store.take_sign_in("s1").await.unwrap(), None, "once");
        t.store.insert_sign_in("s2", "{}", now - jiff::SignedDuration::from_mins(1)).await.unwrap();
        assert_eq!(t.store.take_sign_in("s2").await.unwrap(), None, "expired");
    }
}
