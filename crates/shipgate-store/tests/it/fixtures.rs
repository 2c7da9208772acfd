//! A fresh store in a temporary directory, and the names and records the tests use.

use std::path::PathBuf;

use shipgate_core::{AppName, Digest, EnvName, PromotionKind, PromotionState, Version};
use shipgate_store::{
    Event, EventFilter, LiveChange, NewPromotion, NewRelease, Promotion, Release, SqliteStore,
    Store, Transition,
};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// A store on its own SQLite file; the directory is removed when this is dropped.
pub struct TestStore {
    pub store: SqliteStore,
    pub dir: tempfile::TempDir,
}

impl TestStore {
    pub async fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("shipgate.db"))
            .await
            .unwrap();
        Self { store, dir }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("shipgate.db")
    }

    /// A connection of its own to the same file, bypassing the store (as an intruder would).
    pub async fn raw(&self) -> SqliteConnection {
        let options = SqliteConnectOptions::new().filename(self.db_path());
        SqliteConnection::connect_with(&options).await.unwrap()
    }

    /// Every event, oldest first.
    pub async fn events(&self) -> Vec<Event> {
        self.store.events(EventFilter::default()).await.unwrap()
    }

    /// Registers `web@version` with `digest`.
    pub async fn register(&self, version: &str, digest: &Digest) -> Release {
        let (release, created) = self
            .store
            .insert_release(new_release(version, digest), "ci")
            .await
            .unwrap();
        assert!(created);
        release
    }

    /// Asks for `web@version` in `env`.
    pub async fn request(&self, version: &str, digest: &Digest, env: &str) -> Promotion {
        self.request_kind(version, digest, env, PromotionKind::Promote)
            .await
    }

    pub async fn request_kind(
        &self,
        version: &str,
        digest: &Digest,
        env: &str,
        kind: PromotionKind,
    ) -> Promotion {
        let new = NewPromotion {
            app: app(),
            version: version_of(version),
            digest: digest.clone(),
            env: env_of(env),
            kind,
            previous_version: None,
            override_reason: None,
        };
        self.store.create_promotion(new, "alice").await.unwrap()
    }

    /// Moves a promotion from its current state to `to`, as the engine would.
    pub async fn step(&self, p: &Promotion, to: PromotionState, live: LiveChange) -> Promotion {
        let now = self.store.promotion(p.id).await.unwrap().unwrap().state;
        self.store
            .transition(transition(p.id, &[now], to, live))
            .await
            .unwrap()
    }

    /// Carries a pending promotion through deploying and verifying (where it goes live) to succeeded.
    pub async fn succeed(&self, p: &Promotion) -> Promotion {
        self.step(p, PromotionState::Deploying, LiveChange::Keep)
            .await;
        self.step(p, PromotionState::Verifying, LiveChange::Promoted)
            .await;
        self.step(p, PromotionState::Succeeded, LiveChange::Keep)
            .await
    }
}

pub fn app() -> AppName {
    AppName::parse("web").unwrap()
}

pub fn version_of(v: &str) -> Version {
    Version::parse(v).unwrap()
}

pub fn env_of(e: &str) -> EnvName {
    EnvName::parse(e).unwrap()
}

/// A made-up digest, different for each `n`.
pub fn digest(n: u8) -> Digest {
    Digest::from_sha256(&[n; 32])
}

pub fn new_release(version: &str, digest: &Digest) -> NewRelease {
    NewRelease {
        app: app(),
        version: version_of(version),
        digest: digest.clone(),
        size: 1234,
        commit: Some("0123abc".into()),
        notes: None,
    }
}

pub fn transition(
    id: shipgate_core::PromotionId,
    from: &[PromotionState],
    to: PromotionState,
    live: LiveChange,
) -> Transition {
    Transition {
        promotion_id: id,
        from: from.to_vec(),
        to,
        reason: None,
        live,
        actor: "shipgate".into(),
        message: format!("promotion {id} is now {to}"),
        roll_back_promotion: None,
    }
}
