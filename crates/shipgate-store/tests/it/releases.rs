//! Releases are immutable: registering the same version again is a no-op with the same
//! content and a refusal, naming both digests, with other content.

use shipgate_store::{Store, StoreError};

use crate::fixtures::{TestStore, app, digest, new_release};

on_both_backends! {
    async fn the_same_version_with_the_same_digest_is_a_no_op() {
        let t = TestStore::open().await;
        let (first, created) = t
            .store
            .insert_release(new_release("1.0.0", &digest(1)), "alice")
            .await
            .unwrap();
        assert!(created);
        assert_eq!(first.created_by, "alice");

        let (again, created) = t
            .store
            .insert_release(new_release("1.0.0", &digest(1)), "bob")
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again, first, "the release on record is returned unchanged");

        let events = t.events().await;
        assert_eq!(
            events.len(),
            1,
            "only the first registration is an event: {events:#?}"
        );
        assert_eq!(events[0].kind.to_string(), "release.created");
        assert_eq!(events[0].actor, "alice");
        assert_eq!(t.store.releases(None).await.unwrap(), vec![first]);
    }

    async fn the_same_version_with_another_digest_is_refused_naming_both_and_writes_nothing() {
        let t = TestStore::open().await;
        let original = t.register("1.0.0", &digest(1)).await;
        let events_before = t.events().await.len();

        let err = t
            .store
            .insert_release(new_release("1.0.0", &digest(2)), "mallory")
            .await
            .unwrap_err();
        match &err {
            StoreError::ReleaseConflict {
                app: a,
                version,
                existing,
                offered,
            } => {
                assert_eq!(a, &app());
                assert_eq!(version.as_str(), "1.0.0");
                assert_eq!(existing, &digest(1));
                assert_eq!(offered, &digest(2));
            }
            other => panic!("expected ReleaseConflict, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.starts_with("web@1.0.0 is already registered"),
            "{message}"
        );
        assert!(
            message.contains(digest(1).as_str()),
            "names the digest on record: {message}"
        );
        assert!(
            message.contains(digest(2).as_str()),
            "names the digest offered: {message}"
        );
        assert!(
            message.contains("new version"),
            "says what to do: {message}"
        );

        assert_eq!(
            t.events().await.len(),
            events_before,
            "no event was written"
        );
        assert_eq!(
            t.store.releases(None).await.unwrap(),
            vec![original.clone()]
        );
        assert_eq!(
            t.store.release(&app(), &original.version).await.unwrap(),
            Some(original)
        );
    }

    async fn releases_are_listed_newest_first_and_by_app() {
        let t = TestStore::open().await;
        t.register("1.0.0", &digest(1)).await;
        t.register("1.1.0", &digest(2)).await;
        let mut api = new_release("0.1.0", &digest(3));
        api.app = shipgate_core::AppName::parse("api").unwrap();
        t.store.insert_release(api, "ci").await.unwrap();

        let all: Vec<String> = t
            .store
            .releases(None)
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{}@{}", r.app, r.version))
            .collect();
        assert_eq!(all, ["api@0.1.0", "web@1.1.0", "web@1.0.0"]);
        let web: Vec<String> = t
            .store
            .releases(Some(&app()))
            .await
            .unwrap()
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        assert_eq!(web, ["1.1.0", "1.0.0"]);
    }
}
