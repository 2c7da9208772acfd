//! A fresh store in a temporary directory, and the names and records the tests use.

use shipgate_core::config::DataLocation;

use shipgate_core::{AppName, Digest, EnvName, PromotionKind, PromotionState, Version};
use shipgate_store::cluster::TempCluster;
use shipgate_store::{
    Backend, Event, EventFilter, LiveChange, NewPromotion, NewRelease, Promotion, Release,
    SqlStore, Store, Transition,
};
use sqlx::{AnyConnection, Connection};

tokio::task_local! {
    /// The backend the running test's stores are made on (see `on_both_backends!`).
    pub static BACKEND: Backend;
}

/// A fresh database of the backend under test: a file in `dir`, or a database of its own in
/// the PostgreSQL cluster this test process shares.
pub async fn fresh_location(dir: &std::path::Path) -> DataLocation {
    match BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite) {
        Backend::Sqlite => DataLocation::Sqlite(dir.join("shipgate.db")),
        Backend::Postgres => {
            let cluster = TempCluster::shared().unwrap();
            DataLocation::Postgres(cluster.fresh_database("store").await.unwrap())
        }
    }
}

/// A store on a database of its own; the directory is removed when this is dropped.
pub struct TestStore {
    pub store: SqlStore,
    pub location: DataLocation,
    pub dir: tempfile::TempDir,
}

impl TestStore {
    pub async fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let location = fresh_location(dir.path()).await;
        let store = SqlStore::open_at(&location).await.unwrap();
        Self {
            store,
            location,
            dir,
        }
    }

    /// Opens the same database again, as a restarted server would.
    pub async fn reopen(&mut self) {
        self.store = SqlStore::open_at(&self.location).await.unwrap();
    }

    /// A connection of its own to the same database, bypassing the store (as an intruder would).
    pub async fn raw(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        let url = match &self.location {
            DataLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
            DataLocation::Postgres(url) => url.clone(),
        };
        AnyConnection::connect(&url).await.unwrap()
    }

    /// Drops the database's guard against `UPDATE` or `DELETE` of events (`what`), as an
    /// intruder with the database's password could.
    pub async fn drop_append_only_guard(&self, raw: &mut AnyConnection, what: &str) {
        let sql = match self.store.backend() {
            Backend::Sqlite => format!("DROP TRIGGER events_are_append_only_{what}"),
            Backend::Postgres => "DROP TRIGGER events_are_append_only ON events".to_owned(),
        };
        sqlx::query(&sql).execute(raw).await.unwrap();
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
            hotfix_reason: None,
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
        commit_time: None,
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
